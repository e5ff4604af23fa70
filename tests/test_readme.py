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


def command_rows():
    """Every `stzsar ...` command of the README's Commands table (first column), as tokens."""
    text = README.read_text(encoding="utf-8")
    table = text[text.index("## Commands"):]
    table = table[:table.index("\n## ")] if "\n## " in table else table
    commands = []
    for line in table.splitlines():
        if not line.startswith("| `stzsar "):
            continue
        first = re.split(r"(?<!\\)\|", line)[1]
        commands += [span.replace("\\|", "|").split() for span in re.findall(r"`(stzsar [^`]+)`", first)]
    return commands


def test_the_commands_table_matches_the_parsers():
    """Each option the table shows exists, and is shown with a value exactly when it takes one
    (`--resume` takes a run or a checkpoint; `[--resume]` would say it is a switch)."""
    import argparse

    from stzsar.cli.main import build_parser

    rows = command_rows()
    assert len(rows) >= 8 and any(r[1] == "train" for r in rows)
    problems = []
    for tokens in rows:
        parser, rest = build_parser(), tokens[1:]
        while rest:  # descend into subcommands (eval report, resources list, data inspect)
            subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
            if not subs or rest[0] not in subs[0].choices:
                break
            parser, rest = subs[0].choices[rest[0]], rest[1:]
        for i, token in enumerate(rest):
            flag = token.strip("[]")
            if not flag.startswith("--"):
                continue
            action = parser._option_string_actions.get(flag)
            if action is None:
                problems.append(f"{' '.join(tokens)}: {flag} is not an option")
                continue
            following = rest[i + 1] if i + 1 < len(rest) else None
            shown_with_value = (not token.endswith("]") and following is not None
                                and not following.startswith(("-", "[")) and following != "...")
            if shown_with_value != (action.nargs != 0):
                problems.append(f"{' '.join(tokens)}: {flag} is shown {'with' if shown_with_value else 'without'} "
                                f"a value but {'takes' if action.nargs != 0 else 'takes no'} value")
    assert not problems, "\n".join(problems)
