"""`python -m mafm3.train` (and `torchrun --nproc_per_node N -m mafm3.train`): `mafm3 train`'s arguments.

torchrun --nproc_per_node 4 -m mafm3.train segmentation --dataset HECKTOR --fold 0 --out seg-ct-f0
"""

from __future__ import annotations

import sys

from mafm3.commands import standalone_main, train


def main(argv: list[str] | None = None) -> int:
    return standalone_main(train, "mafm3.train", argv)


if __name__ == "__main__":
    sys.exit(main())
