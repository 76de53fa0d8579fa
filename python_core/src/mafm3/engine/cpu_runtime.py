"""A CPU inference runtime for the segmentation decoder: OpenVINO when installed and faster, else PyTorch.

On a CPU the decoder's full-resolution 3-D convolutions are nearly all of a segmentation's time (the CT-ViT
is about 2 %), so only the decoder is handed to the runtime. `openvino.convert_model` traces it once per skill
(on a small crop, with the batch and spatial sizes left dynamic) and the IR is kept under
`<MAFM3_HOME>/cache/openvino/<key>.xml`, the key hashing the decoder's tensors and configuration and the
OpenVINO version; compiling the cached IR takes about a second. Precision follows the engine's policy: f32, or
bf16 where the policy chose bf16 (a CPU with native bf16), so the runtime never picks a precision of its own.

`RaceDecoder` decides "faster" on the machine itself: the first window batch of a study is decoded by
PyTorch, the next by OpenVINO, each timed per window, and the rest by the faster one (remembered for the skill
while the engine is warm). Tracing costs tens of seconds at paper size, so a skill that is not cached yet is
converted only when the PyTorch estimate of the study's remaining decoding exceeds `CONVERT_WHEN_REMAINING_S`.

`MAFM3_CPU_RUNTIME` = "auto" (default) | "torch" (never use a runtime) | "openvino" (use it, cached or not).
Agreement with PyTorch: the maximum absolute logit difference is within `LOGIT_TOLERANCE` in fp32 (tested).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from mafm3.config import home_dir
from mafm3.errors import MAFM3Error

log = logging.getLogger(__name__)

RUNTIME_ENV = "MAFM3_CPU_RUNTIME"
RUNTIME_CHOICES = ("auto", "torch", "openvino")
LOGIT_TOLERANCE = 1e-2  # fp32, max |OpenVINO - PyTorch| over the logits of a window (measured ~2e-3)
CONVERT_WHEN_REMAINING_S = 30.0  # convert an uncached decoder only when PyTorch would still need this long
TRACE_CROP = 32  # voxels per axis of the crop the decoder is traced on (2 tokens of 16 voxels)


def runtime_choice() -> str:
    """`MAFM3_CPU_RUNTIME`, checked: "auto", "torch" or "openvino"."""
    choice = os.environ.get(RUNTIME_ENV, "auto").strip().lower() or "auto"
    if choice not in RUNTIME_CHOICES:
        raise MAFM3Error(
            f"{RUNTIME_ENV}={choice!r} is not known; set it to one of {', '.join(RUNTIME_CHOICES)}."
        )
    return choice


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


class OpenVinoDecoder:
    """A segmentation decoder compiled by OpenVINO for the CPU: (image, hidden states) -> logits, as
    `UnetrDecoder.forward`: image (B, C, T, H, W), 4 hidden states (B, t, h, w, D) -> (B, K, T, H, W)."""

    def __init__(self, decoder: nn.Module, channels: int, dim: int, dtype: torch.dtype | None) -> None:
        import openvino as ov

        path = cached_ir(decoder, channels, dim)
        hint = "bf16" if dtype == torch.bfloat16 else "f32"
        self.compiled = ov.Core().compile_model(
            str(path), "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
        )
        self.precision = hint

    def __call__(self, image: torch.Tensor, hidden: Sequence[torch.Tensor]) -> torch.Tensor:
        inputs = [image.float().numpy()] + [h.float().numpy() for h in hidden]
        return torch.from_numpy(self.compiled(inputs)[0])


def ir_key(decoder: nn.Module, channels: int, dim: int) -> str:
    """sha256 (20 hex digits) of the decoder's tensors, its input layout and the OpenVINO version."""
    import openvino as ov

    digest = hashlib.sha256(json.dumps([ov.__version__, channels, dim, repr(decoder)]).encode())
    for name, tensor in sorted(decoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:20]


def ir_path(decoder: nn.Module, channels: int, dim: int) -> Path:
    return home_dir() / "cache" / "openvino" / f"{ir_key(decoder, channels, dim)}.xml"


def cached_ir(decoder: nn.Module, channels: int, dim: int) -> Path:
    """The decoder's OpenVINO IR on disk, converted on the first call (to a temp name, then renamed)."""
    import openvino as ov

    path = ir_path(decoder, channels, dim)
    if path.is_file():
        return path
    started = time.perf_counter()
    image = torch.zeros(1, channels, TRACE_CROP, TRACE_CROP, TRACE_CROP)
    tokens = TRACE_CROP // 16
    hidden = [torch.zeros(1, tokens, tokens, tokens, dim) for _ in range(4)]
    shapes = [ov.PartialShape([-1, channels, -1, -1, -1])] + [ov.PartialShape([-1, -1, -1, -1, dim])] * 4
    withhold_converter_telemetry()
    with torch.no_grad(), warnings.catch_warnings():
        # the shape checks the tracer warns about hold for every window (the batch and sizes stay dynamic)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        model = ov.convert_model(decoder, example_input=(image, hidden), input=shapes)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.partial-{os.getpid()}.xml")
    ov.save_model(model, str(partial), compress_to_fp16=False)  # keep the fp32 weights
    partial.with_suffix(".bin").replace(path.with_suffix(".bin"))
    partial.replace(path)
    log.info("converted the decoder to OpenVINO in %.1f s: %s", time.perf_counter() - started, path)
    return path


def withhold_converter_telemetry() -> None:
    """Make OpenVINO's model converter send nothing. Called from code, `convert_model` reports usage to an
    analytics service unless a consent file in the user's home says no (openvino-telemetry); a clinical tool
    makes no network calls, and asks no one to edit their home folder. The converter's telemetry is a
    process-wide singleton (`Telemetry(app_name="OVC")`): it is created here the way the telemetry package
    itself treats CI runs (declined, nothing written to disk), and its consent is withdrawn in case it
    existed.
    """
    try:
        from openvino.tools.ovc.telemetry_utils import init_ovc_telemetry
    except ImportError:  # a converter without telemetry
        return
    previous = os.environ.get("CI")
    os.environ["CI"] = "true"
    try:
        telemetry = init_ovc_telemetry()
    finally:
        if previous is None:
            del os.environ["CI"]
        else:
            os.environ["CI"] = previous
    telemetry.consent = False


class RaceDecoder:
    """The decoder a study's windows go through on the CPU: PyTorch for the first batch, OpenVINO (when
    installed, allowed and worth converting) for the next, and, when the policy chose bf16, OpenVINO in fp32
    for the one after (a CPU's bf16 kernels do not always beat its fp32 ones); then whichever was fastest per
    window.

    decoder: the skill's `UnetrDecoder`; channels, dim: its input channels and the backbone's width; dtype:
    the autocast dtype the engine chose (None = fp32). `choice` overrides the environment ("torch", ...).
    """

    def __init__(
        self,
        decoder: nn.Module,
        channels: int,
        dim: int,
        dtype: torch.dtype | None,
        choice: str | None = None,
    ) -> None:
        self.decoder, self.channels, self.dim, self.dtype = decoder, channels, dim, dtype
        self.choice = choice or runtime_choice()
        if self.choice == "openvino" and not openvino_installed():
            raise MAFM3Error(
                f"{RUNTIME_ENV}=openvino but OpenVINO is not installed: install mafm3[cpu-runtime], "
                f"or unset {RUNTIME_ENV}."
            )
        # runner name -> the precision OpenVINO compiles it in (None: fp32), after PyTorch in race order
        self.contenders = {"openvino": dtype} | ({"openvino-fp32": None} if dtype is not None else {})
        self.runtimes: dict[str, OpenVinoDecoder] = {}
        self.seconds_per_window: dict[str, float] = {}
        self.chosen: str | None = "torch" if self.choice == "torch" or not openvino_installed() else None
        self.windows_left = 0

    def plan(self, windows: int) -> None:
        """Called before each study: `windows` is how many windows it will decode. A study after one too short
        to try OpenVINO on races again."""
        self.windows_left = windows
        if self.chosen == "torch" and self.choice != "torch" and "openvino" not in self.seconds_per_window:
            self.chosen = None if openvino_installed() else "torch"
            self.seconds_per_window.clear()

    def __call__(self, image: torch.Tensor, hidden: Sequence[torch.Tensor]) -> torch.Tensor:
        runner = self._next_runner()
        started = time.perf_counter()
        logits = self.decoder(image, hidden) if runner == "torch" else self.runtimes[runner](image, hidden)
        per_window = (time.perf_counter() - started) / image.shape[0]
        self.windows_left -= image.shape[0]
        if self.chosen is None:
            self.seconds_per_window[runner] = round(per_window, 4)
            if runner == "torch" and not self._worth_converting():
                self.chosen = "torch"
            elif set(self.seconds_per_window) == {"torch", *self.contenders}:
                self.chosen = min(self.seconds_per_window, key=self.seconds_per_window.get)
        return logits

    def _next_runner(self) -> str:
        if self.chosen is not None:
            return self.chosen
        runner = next(name for name in ("torch", *self.contenders) if name not in self.seconds_per_window)
        if runner != "torch" and runner not in self.runtimes:
            precision = self.contenders[runner]
            self.runtimes[runner] = OpenVinoDecoder(self.decoder, self.channels, self.dim, precision)
        return runner

    def _worth_converting(self) -> bool:
        """After PyTorch's batch: whether to try OpenVINO (cached, forced, or the rest takes long enough)."""
        remaining = self.windows_left * self.seconds_per_window["torch"]
        cached = ir_path(self.decoder, self.channels, self.dim).is_file()
        return cached or self.choice == "openvino" or remaining > CONVERT_WHEN_REMAINING_S

    def record(self) -> dict:
        """What ran: the runner chosen and the seconds per window each runner took on its batch."""
        return {
            "runtime": self.chosen or "torch",
            "seconds_per_window": dict(self.seconds_per_window),
        }
