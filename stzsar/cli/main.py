"""Entry point of the ``stzsar`` command.

Each subcommand lives in its own module ``stzsar.cli.<name>`` which defines
``register(subparsers)``: it adds its parser and sets ``func`` (called with the parsed
arguments, returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

# Order shown in --help.
SUBCOMMANDS = ("demo", "train", "eval", "predict", "explain", "attributes", "data", "resources")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stzsar",
        description="Zero-shot video action recognition with CLIP, descriptive attributes and STI.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"stzsar.cli.{name}")
        except ModuleNotFoundError as error:
            if error.name == f"stzsar.cli.{name}":
                continue  # subcommand not part of this install
            raise
        module.register(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
