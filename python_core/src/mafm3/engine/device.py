"""Device and precision policy: CUDA, then MPS, then CPU; bf16 autocast where the hardware does bf16."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mafm3.errors import MAFM3Error
from mafm3.tasks import DEVICES, PRECISIONS

# "1" makes the policy treat the CPU as computing bf16 natively (torch emulates bf16 where it does not,
# slowly), "0" as not: both CPU paths of "auto" can be tested on any machine (`make test` runs both).
CPU_BF16_ENV = "MAFM3_CPU_BF16"


def resolve_device(requested: str = "auto") -> torch.device:
    """The torch device for `requested` ("auto", "cuda", "cuda:N", "mps" or "cpu").

    Raises MAFM3Error when an accelerator is asked for but torch cannot use it.
    """
    name = (requested or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MAFM3Error(
                "A CUDA GPU was requested but torch cannot use one; run `mafm3 doctor` to see why, "
                "or use --device cpu."
            )
        return torch.device(name)
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise MAFM3Error("Apple MPS was requested but is not available; use --device cpu.")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise MAFM3Error(f"Unknown device {requested!r}; use one of {', '.join(DEVICES)}.")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512_BF16 or AMX); emulated bf16 is slower than fp32.

    MAFM3_CPU_BF16=1 or 0 overrides what /proc/cpuinfo says.
    """
    forced = os.environ.get(CPU_BF16_ENV, "")
    if forced:
        if forced not in ("0", "1"):
            raise MAFM3Error(f"{CPU_BF16_ENV} must be 1 or 0, got {forced!r}; unset it to detect the CPU.")
        return forced == "1"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`, or None for full fp32.

    "auto": bf16 on CUDA with bf16 support (fp16 on older GPUs), bf16 on a CPU with native bf16, else fp32.
    """
    if precision not in PRECISIONS:
        raise MAFM3Error(f"Unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}.")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None
