"""`stzsar attributes --quiet` draws no progress bar, its own or the libraries' (model loading)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _run(tmp_path, *extra):
    (tmp_path / "classes.txt").write_text("ApplyEyeMakeup\nArchery\n")
    (tmp_path / "desc.json").write_text(json.dumps({
        "ApplyEyeMakeup": "a person paints mascara and eyeliner near the eyes with a small brush",
        "Archery": "someone pulls a bow string and releases arrows toward a round target",
    }))
    out = tmp_path / f"attrs{len(extra)}.json"
    command = [sys.executable, "-m", "stzsar.cli", "attributes", "--classes", str(tmp_path / "classes.txt"),
               "--descriptions", str(tmp_path / "desc.json"), "--out", str(out), "--extractor", "keybert",
               "--fill", "none", "--no-cache", *extra]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())  # the file is written either way
    return done.stderr


def test_quiet_draws_no_progress_bar(tmp_path):
    pytest.importorskip("sentence_transformers", reason="the keybert extractor needs sentence-transformers")
    loud = _run(tmp_path)
    # Without --quiet some bar is drawn (a tqdm bar prints "|" and a count like "1/2"): the
    # check below could fail.
    assert "%|" in loud, loud
    quiet = _run(tmp_path, "--quiet")
    assert "%|" not in quiet and "\r" not in quiet, quiet
    assert "INFO" not in quiet, quiet
