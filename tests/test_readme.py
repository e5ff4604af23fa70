"""The README says what works: its Python section runs as written."""

import re
from pathlib import Path

import pytest

from tests.test_inference import write_video

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks():
    return re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)


def test_the_python_section_runs_as_written(tmp_path, monkeypatch):
    """Every ```python block, in order, in one namespace, next to a generated clip.mp4 (the file
    name the README uses)."""
    import torch

    blocks = python_blocks()
    assert len(blocks) >= 2, "the README's Python section has gone"
    assert any("video_input(" in b and "clip.mp4" in b for b in blocks)
    write_video(tmp_path / "clip.mp4")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}
    for number, block in enumerate(blocks, 1):
        try:
            exec(compile(block, f"README.md python block {number}", "exec"), namespace)
        except Exception as error:  # pragma: no cover - the message is the point
            pytest.fail(f"README python block {number} fails: {type(error).__name__}: {error}\n{block}")
    # What the comments promise: shapes, and probabilities over the two classes.
    model = namespace["model"]
    assert tuple(namespace["video"].shape) == (1, 8, 3, model.image_size, model.image_size) == (1, 8, 3, 32, 32)
    probs = namespace["probs"]
    assert tuple(probs.shape) == (1, 2)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1))
    assert tuple(namespace["cosine"].shape) == (4, 101)
