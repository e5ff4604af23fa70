"""Reports rebuilt from a results store, without a model or the videos (``stzsar eval report DIR``).

``<out>/store/run.json`` names the protocol, the dataset, the run's facts and, in report order,
each result with its store folder; each folder's manifest holds its class list and video count.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Sequence, Union

from stzsar.eval.meter import summarize_splits
from stzsar.eval.protocols import ProtocolRun, store_slug
from stzsar.eval.store import read_manifest, read_records, result_from_records
from stzsar.eval.subsets import class_subsets

PathLike = Union[str, Path]
RUN_FILE = "run.json"


def store_root(out_dir: PathLike) -> Path:
    """Where the results store of a report folder lives."""
    return Path(out_dir) / "store"


def save_run_file(out_dir: PathLike, protocol: str, dataset: str, names: Sequence[str],
                  meta: Dict[str, Any], topk: Sequence[int] = (1, 5)) -> Path:
    """Write ``run.json`` (atomically) next to the stores of ``names``."""
    root = store_root(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    payload = {"protocol": protocol, "dataset": dataset, "topk": list(topk), "meta": meta,
               "results": [{"name": n, "store": store_slug(n)} for n in names]}
    path = root / RUN_FILE
    tmp = path.with_name(f".{RUN_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    os.replace(tmp, path)
    return path


def load_run(out_dir: PathLike) -> ProtocolRun:
    """The :class:`ProtocolRun` of a finished run, computed from its stored logits."""
    root = store_root(out_dir)
    path = root / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{out_dir}: no results store here ({path} missing; was it written by "
                                "stzsar eval with this --out?)")
    payload = json.loads(path.read_text())
    results = {}
    for entry in payload["results"]:
        directory = root / entry["store"]
        manifest = read_manifest(directory)
        results[entry["name"]] = result_from_records(read_records(directory), manifest["classes"],
                                                     payload.get("topk", (1, 5)),
                                                     expected=manifest.get("num_videos"))
    summary = summarize_splits(results) if payload["protocol"] == "zero-shot" else None
    return ProtocolRun(payload["protocol"], payload["dataset"], results, summary, dict(payload.get("meta") or {}))


def add_class_subsets(run: ProtocolRun, out_dir: PathLike, num_draws: int, fraction: float = 0.5,
                      seed: int = 0) -> ProtocolRun:
    """Attach the random class-subset protocol of every result, from the stored logits."""
    root = store_root(out_dir)
    for name, result in run.results.items():
        run.subsets[name] = class_subsets(read_records(root / store_slug(name)), num_draws, fraction, seed,
                                          result.topk)
    run.meta["class_subsets"] = {"draws": num_draws, "fraction": fraction, "seed": seed}
    return run

