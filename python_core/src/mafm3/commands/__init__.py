"""The `mafm3` sub-commands, one module each (`HELP`, `add_arguments`, `run`), and what they share."""

from __future__ import annotations

import argparse
import sys
from types import ModuleType

from mafm3.tasks import PRECISIONS


def add_device_arguments(parser: argparse.ArgumentParser, precision_help: str | None = None) -> None:
    """`--device` and `--precision`, as every command that runs a model takes them."""
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cuda, mps or cpu")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help=precision_help)


def options_from(args: argparse.Namespace, options_type):
    """An options dataclass (`TrainOptions`, `ImproveOptions`) filled from the parsed arguments it names."""
    fields = options_type.__dataclass_fields__
    return options_type(**{name: getattr(args, name) for name in fields if hasattr(args, name)})


def standalone_main(command: ModuleType, prog: str, argv: list[str] | None = None) -> int:
    """`python -m mafm3.<command>` (and under torchrun): the sub-command's arguments and run, with the CLI's
    one-sentence user errors."""
    from mafm3.errors import MAFM3Error

    parser = argparse.ArgumentParser(prog=prog, description=command.HELP)
    command.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return command.run(args)
    except MAFM3Error as error:
        print(f"{prog.replace('.', ' ')}: error: {error}", file=sys.stderr)
        return 1
