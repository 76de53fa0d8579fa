"""The `mafm3` command.

Each sub-command lives in its own module under `mafm3.commands` with three names: `HELP` (one line),
`add_arguments(parser)` and `run(args) -> int`. Command modules import heavy packages (torch, MONAI) inside
`run`, so `mafm3 --help` and `mafm3 --version` stay instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from mafm3 import __version__, commands
from mafm3.errors import MAFM3Error


def _command_modules() -> dict[str, object]:
    found = {}
    for info in pkgutil.iter_modules(commands.__path__):
        if not info.name.startswith("_"):
            found[info.name.replace("_", "-")] = importlib.import_module(f"mafm3.commands.{info.name}")
    return dict(sorted(found.items()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mafm3",
        description="One frozen CT foundation model, many clinical skills (MAFM3).",
    )
    parser.add_argument("--version", action="version", version=f"mafm3 {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _command_modules().items():
        command_parser = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except MAFM3Error as error:
        print(f"mafm3 {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mafm3 {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
