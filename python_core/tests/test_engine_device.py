"""The device and precision policy (`mafm3.engine.device`): what `--precision auto` picks on a CPU, and
MAFM3_CPU_BF16, which forces either CPU path on any machine (the switch `make test` runs both paths with).

Oracles: the policy as the README states it (bf16 autocast on a CPU with native bf16, float32 on others);
`mafm3 doctor` reports the same choice.
"""

from __future__ import annotations

import json

import pytest
import torch

from mafm3.cli import main
from mafm3.engine.device import CPU_BF16_ENV, autocast_dtype, cpu_has_native_bf16
from mafm3.errors import MAFM3Error

CPU = torch.device("cpu")


@pytest.mark.precision
@pytest.mark.parametrize(("forced", "expected", "name"), [("1", torch.bfloat16, "bf16"), ("0", None, "fp32")])
def test_the_environment_forces_the_cpu_path_of_auto(monkeypatch, capsys, tmp_path, forced, expected, name):
    monkeypatch.setenv(CPU_BF16_ENV, forced)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setenv("MAFM3_HOME", str(tmp_path))
    assert cpu_has_native_bf16() == (forced == "1")
    assert autocast_dtype(CPU, "auto") == expected
    assert main(["doctor", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["precision"] == name


@pytest.mark.parametrize(
    ("precision", "expected"), [("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)]
)
def test_an_explicit_precision_is_kept_whatever_the_cpu(monkeypatch, precision, expected):
    for forced in ("0", "1"):
        monkeypatch.setenv(CPU_BF16_ENV, forced)
        assert autocast_dtype(CPU, precision) == expected


@pytest.mark.precision
def test_a_bad_value_of_the_environment_variable_is_one_sentence(monkeypatch):
    monkeypatch.setenv(CPU_BF16_ENV, "yes")
    with pytest.raises(MAFM3Error, match=f"{CPU_BF16_ENV} must be 1 or 0, got 'yes'; unset it"):
        autocast_dtype(CPU, "auto")
