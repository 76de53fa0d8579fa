"""`python -m mafm3.train` (and `torchrun --nproc_per_node N -m mafm3.train`): `mafm3 train`'s arguments.

torchrun --nproc_per_node 4 -m mafm3.train segmentation --dataset HECKTOR --fold 0 --out seg-ct-f0
"""

from __future__ import annotations

import argparse
import sys

from mafm3.commands import train
from mafm3.errors import MAFM3Error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mafm3.train", description=train.HELP)
    train.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return train.run(args)
    except MAFM3Error as error:
        print(f"mafm3 train: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
