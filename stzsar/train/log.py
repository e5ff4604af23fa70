"""Training logs: a tqdm progress bar, a JSONL file of scalars and TensorBoard event files.

Only rank 0 writes; other ranks get a :class:`MetricsLogger` that does nothing.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from pathlib import Path
from typing import Any, Deque, Dict, Optional, Tuple

logger = logging.getLogger("stzsar.train")


class MetricsLogger:
    """Scalars to ``<run>/metrics.jsonl`` (one JSON object a line) and ``<run>/tensorboard``.

    Args:
        run_dir: the run folder (``None``: write nothing, e.g. on ranks other than 0).
        tensorboard: also write TensorBoard event files when the package is installed.
    """

    def __init__(self, run_dir: Optional[Path], tensorboard: bool = True):
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._jsonl = None
        self._writer = None
        if self.run_dir is None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                logger.info("tensorboard is not installed; scalars go to metrics.jsonl only")
            else:
                self._writer = SummaryWriter(str(self.run_dir / "tensorboard"))

    def log(self, step: int, scalars: Dict[str, Any], prefix: str = "train") -> None:
        if self._jsonl is None:
            return
        record = {"step": step, "time": round(time.time(), 3)}
        record.update({k: _plain(v) for k, v in scalars.items()})
        self._jsonl.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for key, value in scalars.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._writer.add_scalar(f"{prefix}/{key}", value, step)

    def event(self, step: int, **fields: Any) -> None:
        """A non-scalar event (checkpoint written, resumed, stopped) in the JSONL file."""
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"step": step, "time": round(time.time(), 3),
                                          **{k: _plain(v) for k, v in fields.items()}}) + "\n")

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    if isinstance(value, Path):
        return str(value)
    return value


class Throughput:
    """Clips per second over the last ``window`` optimizer steps."""

    def __init__(self, window: int = 20):
        self._events: Deque[Tuple[float, int]] = deque(maxlen=window + 1)

    def start(self) -> None:
        self._events.clear()
        self._events.append((time.perf_counter(), 0))

    def update(self, clips: int) -> float:
        total = self._events[-1][1] + clips if self._events else clips
        self._events.append((time.perf_counter(), total))
        (t0, n0), (t1, n1) = self._events[0], self._events[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


def progress_bar(total: int, initial: int, enabled: bool, desc: str = "train"):
    """A tqdm bar over optimizer steps (tqdm shows the ETA); a no-op object when disabled."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="step",
                dynamic_ncols=True, smoothing=0.1)
