"""Helpers shared by the benchmarks: where a figure came from, JSON results, tables and timers.

Every benchmark prints one table (:func:`format_table`) and writes one JSON file with
:func:`write_result`, which records the machine, the library versions and the git commit beside
the figures, so that a number in ``docs/benchmarks.md`` can always be traced to the run that
produced it.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"

PathLike = Union[str, Path]


# --------------------------------------------------------------------------------------------
# Provenance: machine, versions, git commit
# --------------------------------------------------------------------------------------------


def _meminfo_total_bytes() -> Optional[int]:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> Dict[str, Any]:
    """The machine a figure was measured on: CPU, usable cores, memory and the GPU if any."""
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    info: Dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "memory_bytes": _meminfo_total_bytes(),
        "gpu": None,
    }
    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info["gpu"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_bytes": int(props.total_memory),
            "multiprocessors": int(props.multi_processor_count),
            "count": torch.cuda.device_count(),
        }
    return info


def _version(module: str) -> Optional[str]:
    try:
        imported = __import__(module)
    except Exception:  # not installed, or fails to import: record that, never crash a benchmark
        return None
    return str(getattr(imported, "__version__", "unknown"))


def versions() -> Dict[str, Any]:
    """Versions of Python, torch (and its CUDA), Triton, open_clip, PyAV, numpy and the extension."""
    import torch

    from stzsar._extension import has_cpu_kernels, has_cuda_kernels

    with warnings.catch_warnings():
        # The "extension not built" warning belongs in the record below, not on the console.
        warnings.simplefilter("ignore")
        cpu_kernels, cuda_kernels = has_cpu_kernels(), has_cuda_kernels()
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _version("triton"),
        "open_clip": _version("open_clip"),
        "av": _version("av"),
        "numpy": _version("numpy"),
        "stzsar_C_cpu_kernels": cpu_kernels,
        "stzsar_C_cuda_kernels": cuda_kernels,
    }


def _git(*args: str) -> Optional[str]:
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_info() -> Dict[str, Any]:
    """The commit the code ran at and whether tracked files had local changes (``dirty``).

    Where the code runs from a copy without ``.git`` (a remote GPU machine, say), set
    ``STZSAR_GIT_COMMIT`` to the commit the copy was made from; it is recorded as given.
    """
    commit = _git("rev-parse", "HEAD")
    if commit is None and os.environ.get("STZSAR_GIT_COMMIT"):
        return {"commit": os.environ["STZSAR_GIT_COMMIT"], "dirty": None, "source": "STZSAR_GIT_COMMIT"}
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit or "unknown", "dirty": bool(status) if status is not None else None}


def provenance() -> Dict[str, Any]:
    """Everything :func:`write_result` stores beside the figures."""
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": versions(),
        "git": git_info(),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
    }


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


def _safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in text).strip("-")


def write_result(
    benchmark: str,
    tag: str,
    config: Dict[str, Any],
    results: Any,
    out_dir: Optional[PathLike] = None,
) -> Path:
    """Write ``{benchmark}_{tag}.json`` under ``out_dir`` (default ``benchmarks/results/``).

    A rerun of the same benchmark and configuration replaces its file, so the folder holds the
    latest figure of each configuration; the provenance inside says when and where it was taken.
    """
    directory = Path(out_dir) if out_dir is not None else RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": benchmark, "tag": tag, **provenance(), "config": config, "results": results}
    path = directory / f"{_safe_name(benchmark)}_{_safe_name(tag)}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=_json_default) + "\n")
    tmp.replace(path)  # never leave a half-written file behind
    return path


def step_figures(figures: Dict[str, Any]) -> None:
    """Hand a step's figures to the stage runner (``benchmarks/gpu_check.py``), which names the
    file in ``GPU_CHECK_STEP_JSON``; outside a stage nothing is written. A step that writes them
    as it goes keeps its figures so far when it is stopped at its time cap."""
    path = os.environ.get("GPU_CHECK_STEP_JSON")
    if path:
        tmp = Path(path + ".tmp")
        tmp.write_text(json.dumps(figures, indent=2, default=_json_default) + "\n")
        tmp.replace(path)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def describe_machine(info: Optional[Dict[str, Any]] = None) -> str:
    """One line naming the machine (for table headers and docs)."""
    info = info or machine_info()
    text = f"{info['cpu']}, {info['usable_cores']} usable cores"
    if info.get("gpu"):
        gpu = info["gpu"]
        text = f"{gpu['name']} ({gpu['memory_bytes'] / 2**30:.0f} GiB), " + text
    return text


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def format_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    title: Optional[str] = None,
    notes: Sequence[str] = (),
    align: Optional[str] = None,
) -> str:
    """A Markdown table (readable as plain text too): numbers right-aligned, text left-aligned.

    ``align`` gives one character per column (``"l"``/``"r"``) to override the guess.
    """
    rows = [["" if cell is None else str(cell) for cell in row] for row in rows]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row {row} has {len(row)} cells, the header {len(headers)}")
    if align is None:
        align = "".join(
            "r" if rows and all(_looks_numeric(row[i]) for row in rows if row[i]) and any(row[i] for row in rows)
            else "l"
            for i in range(len(headers))
        )
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(cells, widths, align)]
        return "| " + " | ".join(parts) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2)) for w, a in zip(widths, align)) + "|"
    out = []
    if title:
        out += [title, ""]
    out += [line(headers), rule] + [line(row) for row in rows]
    if notes:
        out += [""] + [f"- {note}" for note in notes]
    return "\n".join(out)


def _looks_numeric(text: str) -> bool:
    cleaned = text.replace(",", "").replace("%", "").replace("x", "").replace("+-", "").strip()
    try:
        float(cleaned.split()[0] if cleaned else "x")
    except ValueError:
        return False
    return True


def fmt(value: Optional[float], digits: int = 2) -> str:
    """A number for a table; ``None`` and NaN print as ``-``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def synchronize(device: Any) -> None:
    """Wait for queued GPU work, so that wall-clock timers measure it."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], *, device: Any, warmup: int = 1, iters: int = 3) -> Dict[str, float]:
    """Run ``fn`` ``warmup`` times untimed, then ``iters`` times timed (seconds).

    Returns the median (the figure to quote: robust to a noisy shared machine), the minimum and
    the maximum. The device is synchronised around every call.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    for _ in range(max(0, warmup)):
        fn()
    synchronize(device)
    times: List[float] = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "iters": iters}


def proc_status_kb(field: str) -> Optional[int]:
    """A ``/proc/self/status`` field in kB (``VmRSS``, ``VmHWM``), or ``None`` off Linux."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None
