"""The CPU runtime policy (`engine.cpu_runtime`): OpenVINO agrees with PyTorch within the stated tolerance,
the race keeps the faster of the two, and without OpenVINO (or with MAFM3_CPU_RUNTIME=torch) PyTorch runs
alone.

Oracle: the PyTorch decoder itself on the same windows, fp32; tolerance `LOGIT_TOLERANCE` (max abs logit).
`make test` installs the `cpu-runtime` extra, so the OpenVINO tests run there; elsewhere they skip.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from mafm3.engine import cpu_runtime
from mafm3.engine.cpu_runtime import LOGIT_TOLERANCE, OpenVinoDecoder, RaceDecoder, runtime_choice
from mafm3.errors import MAFM3Error
from mafm3.model.decoders import UnetrDecoder, UnetrDecoderConfig

DIM = 32


@pytest.fixture
def decoder() -> UnetrDecoder:
    torch.manual_seed(0)
    return UnetrDecoder(UnetrDecoderConfig(hidden_size=DIM, feature_size=4, pet_skip=True)).eval()


def windows(batch: int, size: int = 48, seed: int = 1):
    """A batch of 2-channel crops and the 4 hidden states a backbone with 16-voxel patches would give."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 2, size, size, size, generator=generator)
    tokens = size // 16
    hidden = [torch.randn(batch, tokens, tokens, tokens, DIM, generator=generator) for _ in range(4)]
    return image, hidden


def test_openvino_agrees_with_pytorch_within_tolerance_on_other_sizes_than_traced(
    decoder, tmp_path, monkeypatch
):
    pytest.importorskip("openvino")
    monkeypatch.setenv("MAFM3_HOME", str(tmp_path))
    runtime = OpenVinoDecoder(decoder, channels=2, dim=DIM, dtype=None)
    assert runtime.precision == "f32"
    assert list((tmp_path / "cache" / "openvino").glob("*.xml"))  # the IR is cached for the next process
    for batch, size in ((3, 48), (1, 64)):
        image, hidden = windows(batch, size)
        with torch.inference_mode():
            reference = decoder(image, hidden)
        ours = runtime(image, hidden)
        assert ours.shape == reference.shape
        difference = float((ours - reference).abs().max())
        assert difference <= LOGIT_TOLERANCE, difference


def test_converting_the_decoder_sends_no_telemetry_and_writes_nothing_in_home(decoder, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    telemetry = pytest.importorskip("openvino_telemetry")
    sent = []
    monkeypatch.setattr(telemetry.main.TelemetrySender, "send", lambda self, *args: sent.append(args))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # where the telemetry keeps its consent and client id
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("MAFM3_HOME", str(tmp_path / "mafm3"))
    monkeypatch.delenv("CI", raising=False)
    OpenVinoDecoder(decoder, channels=2, dim=DIM, dtype=None)
    assert sent == []
    assert list((tmp_path / "home").iterdir()) == []
    assert "CI" not in os.environ  # the variable the converter's telemetry reads is put back


def test_the_race_decodes_one_batch_each_then_keeps_the_faster(decoder, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setenv("MAFM3_HOME", str(tmp_path))
    race = RaceDecoder(decoder, channels=2, dim=DIM, dtype=None, choice="openvino")
    race.plan(6)
    image, hidden = windows(2)
    with torch.inference_mode():
        reference = decoder(image, hidden)
        outputs = [race(image, hidden) for _ in range(3)]
    assert set(race.seconds_per_window) == {"torch", "openvino"}
    assert race.chosen == min(race.seconds_per_window, key=race.seconds_per_window.get)
    assert torch.equal(outputs[0], reference)  # the first batch is PyTorch's own
    assert all(float((o - reference).abs().max()) <= LOGIT_TOLERANCE for o in outputs[1:])
    assert race.record()["runtime"] == race.chosen


def test_an_uncached_runtime_is_converted_for_a_long_study_but_not_a_short_one(
    decoder, tmp_path, monkeypatch
):
    monkeypatch.setenv("MAFM3_HOME", str(tmp_path))
    monkeypatch.setattr(cpu_runtime, "openvino_installed", lambda: True)
    monkeypatch.setattr(cpu_runtime, "ir_path", lambda *args: tmp_path / "absent.xml")

    def never(*args, **kwargs):
        raise AssertionError("a short study must not convert the decoder")

    monkeypatch.setattr(cpu_runtime, "OpenVinoDecoder", never)
    race = RaceDecoder(decoder, channels=2, dim=DIM, dtype=None)
    race.plan(4)
    image, hidden = windows(2)
    with torch.inference_mode():
        race(image, hidden), race(image, hidden)
    assert race.chosen == "torch" and list(race.seconds_per_window) == ["torch"]

    class Instant:  # a runtime that is never slower than PyTorch
        def __init__(self, *args) -> None:
            pass

        def __call__(self, image, hidden):
            return torch.zeros(image.shape[0], 3, *image.shape[2:])

    monkeypatch.setattr(cpu_runtime, "OpenVinoDecoder", Instant)
    monkeypatch.setattr(cpu_runtime, "CONVERT_WHEN_REMAINING_S", 0.0)  # the next study is long enough
    race.plan(4)
    with torch.inference_mode():
        race(image, hidden), race(image, hidden)
    assert race.chosen == "openvino" and set(race.seconds_per_window) == {"torch", "openvino"}


def test_the_race_keeps_pytorch_when_the_runtime_is_slower(decoder, monkeypatch):
    class Slow:  # a runtime slower than PyTorch on any machine
        def __init__(self, *args) -> None:
            pass

        def __call__(self, image, hidden):
            time.sleep(2.0 + 2 * race.seconds_per_window["torch"] * image.shape[0])
            return torch.zeros(image.shape[0], 3, *image.shape[2:])

    monkeypatch.setattr(cpu_runtime, "openvino_installed", lambda: True)
    monkeypatch.setattr(cpu_runtime, "OpenVinoDecoder", Slow)
    race = RaceDecoder(decoder, channels=2, dim=DIM, dtype=None, choice="openvino")
    race.plan(6)
    image, hidden = windows(1)
    with torch.inference_mode():
        outputs = [race(image, hidden) for _ in range(3)]
        reference = decoder(image, hidden)
    assert race.chosen == "torch" and set(race.seconds_per_window) == {"torch", "openvino"}
    assert torch.equal(outputs[2], reference)  # after the race, PyTorch decodes


def test_with_bf16_the_race_also_tries_openvino_in_fp32_and_keeps_the_fastest(decoder, monkeypatch):
    compiled = []

    class Fake:  # OpenVINO's bf16 kernels slower than its fp32 ones, as on some CPUs
        def __init__(self, decoder, channels, dim, dtype) -> None:
            self.dtype = dtype
            compiled.append(dtype)

        def __call__(self, image, hidden):
            time.sleep(1.0 if self.dtype == torch.bfloat16 else 0.0)
            return torch.zeros(image.shape[0], 3, *image.shape[2:])

    monkeypatch.setattr(cpu_runtime, "openvino_installed", lambda: True)
    monkeypatch.setattr(cpu_runtime, "OpenVinoDecoder", Fake)
    race = RaceDecoder(decoder, channels=2, dim=DIM, dtype=torch.bfloat16, choice="openvino")
    race.plan(8)
    image, hidden = windows(1)
    with torch.inference_mode():
        for _ in range(4):
            race(image, hidden)
    assert compiled == [torch.bfloat16, None]
    assert set(race.seconds_per_window) == {"torch", "openvino", "openvino-fp32"}
    assert race.chosen == min(race.seconds_per_window, key=race.seconds_per_window.get)
    assert race.chosen != "openvino"  # the slow bf16 runtime is not kept


def test_without_openvino_pytorch_decodes_alone(decoder, monkeypatch):
    monkeypatch.setattr(cpu_runtime, "openvino_installed", lambda: False)
    race = RaceDecoder(decoder, channels=2, dim=DIM, dtype=None)
    race.plan(100_000)  # long enough that a runtime would be worth converting
    image, hidden = windows(2)
    with torch.inference_mode():
        first, second = race(image, hidden), race(image, hidden)
        reference = decoder(image, hidden)
    assert race.chosen == "torch" and not race.runtimes
    assert torch.equal(first, reference) and torch.equal(second, reference)


def test_mafm3_cpu_runtime_torch_keeps_pytorch_even_with_openvino_installed(decoder, monkeypatch):
    monkeypatch.setenv("MAFM3_CPU_RUNTIME", "torch")
    monkeypatch.setattr(cpu_runtime, "openvino_installed", lambda: True)
    race = RaceDecoder(decoder, channels=2, dim=DIM, dtype=None)
    race.plan(100_000)
    image, hidden = windows(1)
    with torch.inference_mode():
        race(image, hidden), race(image, hidden)
    assert race.chosen == "torch" and not race.runtimes


def test_asking_for_openvino_without_it_is_refused_with_what_to_do(decoder, monkeypatch):
    monkeypatch.setenv("MAFM3_CPU_RUNTIME", "openvino")
    monkeypatch.setattr(cpu_runtime, "openvino_installed", lambda: False)
    with pytest.raises(MAFM3Error, match=r"install mafm3\[cpu-runtime\]"):
        RaceDecoder(decoder, channels=2, dim=DIM, dtype=None)


def test_an_unknown_runtime_setting_is_refused(monkeypatch):
    monkeypatch.setenv("MAFM3_CPU_RUNTIME", "tensorrt")
    with pytest.raises(MAFM3Error, match="MAFM3_CPU_RUNTIME='tensorrt' is not known"):
        runtime_choice()
