"""Compare keyword extractors on description files with measures that need no labels.

``python -m stzsar.attributes.compare DESCRIPTIONS.json [...] --extractors keybert keybert:fill=none yake rake``
prints, per extractor, over all classes of the files (each file is one run, as with
``stzsar attributes``):

- ``full``: share of classes that get ``num`` attributes;
- ``mean``: mean number of attributes per class;
- ``grounded``: share of attributes whose words all occur in the class's own description
  (the rest come from elsewhere: fill words, or LLM knowledge);
- ``shared``: share of attributes that also appear (same word stems) in the lists of at least
  ``--shared-by`` other classes of the same file. Such attributes ("sport", "person") do not help
  to tell classes apart; lower is better;
- ``cpu_s``: CPU seconds of the extraction, all threads, model loading included (wall time on a
  shared machine says little).

These measure coverage and distinctiveness, not whether a keyword names something visible;
``docs/attributes.md`` adds a hand-judged sample for that.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Mapping, Sequence

from stzsar.attributes.descriptions import read_descriptions
from stzsar.attributes.offline import make_offline_extractor
from stzsar.attributes.pipeline import extract_attributes
from stzsar.attributes.postprocess import content_words, keyword_stems, light_stem


def measure(
    attributes: Mapping[str, Sequence[str]], descriptions: Mapping[str, str], num: int, shared_by: int = 3
) -> Dict[str, float]:
    """The label-free measures above for one file's attributes."""
    stems_of = {c: [frozenset(keyword_stems(k)) for k in kws] for c, kws in attributes.items()}
    owners: Counter = Counter()
    for keywords in stems_of.values():
        for stems in set(keywords):
            owners[stems] += 1
    total = sum(len(v) for v in attributes.values()) or 1
    grounded = shared = 0
    for cls, keywords in stems_of.items():
        own = {light_stem(w) for w in content_words(descriptions.get(cls) or "")}
        grounded += sum(stems <= own for stems in keywords)
        shared += sum(owners[stems] - 1 >= shared_by for stems in keywords)
    return {
        "full": sum(len(v) >= num for v in attributes.values()) / max(1, len(attributes)),
        "mean": total / max(1, len(attributes)) if any(attributes.values()) else 0.0,
        "grounded": grounded / total,
        "shared": shared / total,
    }


def make_from_spec(spec: str):
    """An offline extractor from ``name`` or ``name:key=value;key=value`` (``keybert:fill=none``)."""
    name, _, options = spec.partition(":")
    kwargs = {}
    for item in filter(None, options.split(";")):
        key, _, value = item.partition("=")
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                continue
        kwargs[key.strip()] = value
    return make_offline_extractor(name, **kwargs)


def compare(
    files: Sequence[Path], extractors: Sequence[str], num: int = 8, shared_by: int = 3
) -> Dict[str, Dict[str, object]]:
    """Run each extractor over each file; returns ``{extractor: {"measures": ..., "attributes": {file: {...}}}}``."""
    out: Dict[str, Dict[str, object]] = {}
    for name in extractors:
        per_file, sums, count = {}, Counter(), 0
        start = time.process_time()
        for path in files:
            descriptions = read_descriptions(path)
            classes = list(descriptions)
            result = extract_attributes(
                classes, descriptions, make_from_spec(name), num=num, progress=False
            )
            per_file[str(path)] = result.attributes
            for key, value in measure(result.attributes, descriptions, num, shared_by).items():
                sums[key] += value * len(classes)
            count += len(classes)
        measures = {k: v / count for k, v in sums.items()}
        measures["cpu_s"] = time.process_time() - start
        out[name] = {"measures": measures, "attributes": per_file}
    return out


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="description files (ER-ZSAR JSON, JSON or CSV map)")
    parser.add_argument("--extractors", nargs="+", default=["keybert", "yake", "rake"],
                        help="offline extractors as name or name:key=value;key=value")
    parser.add_argument("--num", type=int, default=8)
    parser.add_argument("--shared-by", type=int, default=3)
    parser.add_argument("--examples", type=int, default=5, help="random classes to show per file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write every extractor's attributes here")
    args = parser.parse_args(argv)
    results = compare(args.files, args.extractors, args.num, args.shared_by)
    print("| extractor | full | mean | grounded | shared | cpu_s |\n|---|---|---|---|---|---|")
    for name, result in results.items():
        m = result["measures"]
        print(f"| {name} | {m['full']:.2f} | {m['mean']:.2f} | {m['grounded']:.2f} | {m['shared']:.2f} | {m['cpu_s']:.1f} |")
    rng = random.Random(args.seed)
    for path in args.files:
        classes = list(read_descriptions(path))
        for cls in sorted(rng.sample(classes, min(args.examples, len(classes)))):
            print(f"\n{path.name} / {cls}")
            for name, result in results.items():
                print(f"  {name:24s} {', '.join(result['attributes'][str(path)][cls])}")
    if args.json:
        args.json.write_text(json.dumps({n: r["attributes"] for n, r in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
