"""report.md with the class-subset protocol: each table once, with headers that say which protocol."""

import json

import numpy as np

from stzsar.eval.meter import summarize_splits
from stzsar.eval.protocols import ProtocolRun
from stzsar.eval.report import write_report
from stzsar.eval.store import StoredRecords, result_from_records
from stzsar.eval.subsets import class_subsets

CLASSES = ["archery", "bowling", "surfing", "juggling", "yo yo", "salsa spin"]


def tables(section):
    """The header line of every Markdown table of a section."""
    lines = section.splitlines()
    return [line for line, below in zip(lines, lines[1:]) if line.startswith("| ") and below.startswith("|---")]


def test_class_subset_tables_do_not_repeat_a_header(tmp_path):
    rng = np.random.default_rng(0)
    n = 40
    records = StoredRecords(indices=np.arange(n), labels=rng.integers(0, len(CLASSES), n),
                            view_counts=np.ones(n, dtype=np.int64),
                            logits=rng.normal(size=(n, len(CLASSES))).astype(np.float32))
    result = result_from_records(records, CLASSES, (1, 5), expected=n)
    run = ProtocolRun("zero-shot", "custom", {"split 1": result}, summarize_splits({"split 1": result}),
                      {"model": "stzsar-tiny"})
    run.subsets["split 1"] = class_subsets(records, 5, 0.5, 0, result.topk)
    write_report(run, tmp_path)
    markdown = (tmp_path / "report.md").read_text()
    sections = markdown.split("\n## ")
    headers = [header for section in sections for header in tables(section)]
    assert len(headers) == len(set(headers)), headers
    assert len(tables(sections[1])) == 3  # confused pairs, confused pairs within the subsets, per class

    # The per-class table carries both protocols' figures, as report.json has them.
    report = json.loads((tmp_path / "report.json").read_text())["results"]["split 1"]
    full = {row["class"]: row for row in report["per_class"]}
    within = {row["class"]: row for row in report["class_subsets"]["per_class"]}
    rows = [line.split("|")[1:-1] for line in sections[1].splitlines()
            if line.startswith("| ") and line.split("|")[1].strip() in CLASSES]
    per_class = [cells for cells in rows if len(cells) == 5]
    assert sorted(cells[0].strip() for cells in per_class) == sorted(CLASSES)

    def shown(value):
        return "-" if value is None else f"{value:.1f}"

    for name, videos, accuracy, sub_videos, sub_accuracy in per_class:
        name = name.strip()
        assert (int(videos), accuracy.strip()) == (full[name]["videos"], shown(full[name]["accuracy"]))
        assert (int(sub_videos), sub_accuracy.strip()) == (within[name]["videos"], shown(within[name]["accuracy"]))
