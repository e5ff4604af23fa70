"""The README's extras sentence and commands table say what the package and the CLI do."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_readme import README, command_rows

PYPROJECT = README.parent / "pyproject.toml"


def extras() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs tomllib (3.11+) or tomli")
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["optional-dependencies"]


def extra_description(name: str) -> str:
    """The README's words in parentheses after `[name]` in the extras sentence."""
    text = " ".join(README.read_text(encoding="utf-8").split())
    match = re.search(r"`\[" + re.escape(name) + r"\]`\s*\(([^()]*)\)", text)
    assert match, f"the README's extras sentence has no `[{name}]` (...)"
    return match.group(1)


def test_the_bench_extra_names_the_maxsim_peers_it_installs():
    pytest.importorskip("benchmarks.peers", reason="benchmarks/ is part of the clone, not the package")
    from benchmarks.peers import PEERS

    bench = [re.split(r"[<>=!~ ;\[]", requirement, maxsplit=1)[0] for requirement in extras()["bench"]]
    described = extra_description("bench")
    for peer in PEERS.values():
        assert peer.name in bench, f"{peer.name} is a benchmark peer but not in the [bench] extra"
        assert f"`{peer.name}`" in described, f"the README's [bench] does not name {peer.name}: {described!r}"


def test_the_eval_row_shows_how_to_accept_unscored_videos():
    """A run with unscored videos fails by default: the table shows the option that accepts some."""
    from stzsar.cli.main import build_parser

    row = next(tokens for tokens in command_rows() if tokens[1] == "eval" and "--protocol" in tokens)
    assert "[--allow-unscored" in row and row[row.index("[--allow-unscored") + 1] == "SHARE]"
    eval_parser = next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices
                       and "eval" in a.choices).choices["eval"]
    action = eval_parser._option_string_actions["--allow-unscored"]
    assert action.metavar == "SHARE" and not action.default  # default: every video must be scored
