"""Shared test set-up of the core: the precision policy every numeric test states.

`--precision auto` runs bf16 autocast on a CPU with native bf16 and float32 elsewhere. MAFM3_CPU_BF16=1 (or 0)
makes the policy take the bf16 (or float32) CPU path on any machine, emulating bf16 where the CPU lacks it;
`make test` runs the tests marked `precision` both ways. A test that runs the "auto" policy on the CPU without
the `precision` mark fails here, so no such test can pass on one machine and fail on the next.
"""

from __future__ import annotations

import pytest
import torch

import mafm3.engine.device

# Relative error each precision allows for one result computed two ways (a fused against a plain path, two
# devices): two units in the last place of the narrower format, as rounding the inputs of each matrix
# product once costs one. float32's bound is for sums of up to ~10^4 terms taken in another order
# (error ~ sqrt(n) ulps).
ULPS = {torch.float32: 128, torch.bfloat16: 2, torch.float16: 2}


def relative_tolerance(dtype: torch.dtype | None) -> float:
    """The relative error allowed under autocast `dtype` (None: float32), derived from its machine epsilon."""
    dtype = dtype or torch.float32
    return ULPS[dtype] * torch.finfo(dtype).eps


def assert_close_in_precision(found: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None) -> None:
    """`found` equals `expected` within `relative_tolerance(dtype)` of the largest magnitude in `expected`."""
    scale = float(expected.float().abs().max())
    torch.testing.assert_close(
        found.float(), expected.float(), rtol=0, atol=relative_tolerance(dtype) * max(scale, 1e-12)
    )


@pytest.fixture()
def cpu_autocast() -> torch.dtype | None:
    """The autocast dtype `--precision auto` takes on this CPU (None: float32), or MAFM3_CPU_BF16's."""
    return mafm3.engine.device.autocast_dtype(torch.device("cpu"), "auto")


@pytest.fixture(autouse=True)
def _auto_precision_only_in_precision_tests(request, monkeypatch):
    """Fails a test that lets the "auto" policy choose on the CPU in this process unless it is marked
    `precision` (such a test gives different numbers on CPUs with and without native bf16)."""
    if request.node.get_closest_marker("precision"):
        yield
        return
    consulted = []
    detect = mafm3.engine.device.cpu_has_native_bf16
    monkeypatch.setattr(
        mafm3.engine.device, "cpu_has_native_bf16", lambda: consulted.append(True) or detect()
    )
    yield
    if consulted:
        pytest.fail(
            "this test runs `--precision auto` on the CPU: mark it `@pytest.mark.precision` (`make test` "
            "runs it on both CPU paths; tolerances from `relative_tolerance`), or ask for fp32 or bf16",
            pytrace=False,
        )
