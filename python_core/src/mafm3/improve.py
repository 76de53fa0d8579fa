"""`python -m mafm3.improve` (and `torchrun --nproc_per_node N -m mafm3.improve`): `mafm3 improve`'s
arguments; under torchrun every rank fine-tunes (DDP), rank 0 evaluates, writes and installs.

torchrun --nproc_per_node 4 -m mafm3.improve --skill hecktor-seg-petct --dataset FIXED --out seg-v2 --install
"""

from __future__ import annotations

import sys

from mafm3.commands import improve, standalone_main


def main(argv: list[str] | None = None) -> int:
    return standalone_main(improve, "mafm3.improve", argv)


if __name__ == "__main__":
    sys.exit(main())
