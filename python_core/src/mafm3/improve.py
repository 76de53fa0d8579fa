"""`python -m mafm3.improve` (and `torchrun --nproc_per_node N -m mafm3.improve`): `mafm3 improve`'s
arguments; under torchrun every rank fine-tunes (DDP), rank 0 evaluates, writes and installs.

torchrun --nproc_per_node 4 -m mafm3.improve --skill hecktor-seg-petct --dataset FIXED --out seg-v2 --install
"""

from __future__ import annotations

import argparse
import sys

from mafm3.commands import improve
from mafm3.errors import MAFM3Error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mafm3.improve", description=improve.HELP)
    improve.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return improve.run(args)
    except MAFM3Error as error:
        print(f"mafm3 improve: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
