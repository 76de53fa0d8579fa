"""`paper_whole_study`: the paper-size PET/CT skill over a whole realistic study, dense fp32 PyTorch against
the fast path, side by side in one run, and each lever of the fast path measured on its own.

Baseline: MONAI-placed Gaussian sliding windows over the whole 240 x 480 x 480 ROI box, every window decoded
by PyTorch in fp32 (what `mafm3 run` did before the fast path). Where that does not fit the budget (a CPU:
minutes), one batch of windows is timed and multiplied by the window count, and the report says so
(`baseline_scope`). Fast path: what `mafm3 run` does now, timed over the whole study: only windows holding
body or PET uptake, over the box fitted to them, the decoder in PyTorch or OpenVINO
(`cpu_runtime.RaceDecoder`), the precision the policy chose. Its labels are compared with the baseline's: in
full on a GPU; on a CPU, per window on the timed batch (the blend of windows is the same arithmetic on both
paths)."""

from __future__ import annotations

import time

import numpy as np
import torch

from mafm3.bench.measure import best_of, measured
from mafm3.bench.sections import PAPER_SEGMENTATION, segment_quietly
from mafm3.bench.sections import ratio as _ratio
from mafm3.engine.cpu_runtime import OpenVinoDecoder, RaceDecoder, cached_ir, openvino_installed
from mafm3.engine.device import cpu_has_native_bf16
from mafm3.engine.inference import (
    SW_BATCH_SIZE,
    autocast,
    decoded_windows,
    sliding_window_labels,
    window_count,
    window_slices,
)
from mafm3.imaging.preprocess import PreprocessingConfig, labels_to_ct_grid, prepare_input
from mafm3.imaging.study import Study
from mafm3.model.skill_model import SegmentationSkill
from mafm3.skills.presets import PRESETS


def _precision(dtype) -> str:
    return str(dtype).removeprefix("torch.") if dtype is not None else "fp32"


def paper_whole_study(
    skill: SegmentationSkill, study: Study, device: torch.device, dtype, repeats: int
) -> dict:
    """The section: baseline_s, fast_s, ratio, windows_total, windows_decoded, how the baseline was timed,
    the label comparison, the study's end to end (preprocess + fast path + labels onto the CT grid) and the
    levers."""
    preset = PRESETS[PAPER_SEGMENTATION]
    with measured(device) as preprocessing:
        prepared = prepare_input(
            study, PreprocessingConfig.from_dict(preset.preprocessing), skill_name="paper"
        )
    window = tuple(preset.inference["window_voxels"])
    overlap = float(preset.inference["overlap"])
    total = window_count(prepared.shape, window, overlap)
    occupied = prepared.occupied
    channels = prepared.array.shape[0]
    decoder = (
        RaceDecoder(skill.decoder, channels, skill.backbone.config.dim, dtype)
        if device.type == "cpu"
        else None
    )

    def fast() -> tuple[np.ndarray, np.ndarray]:
        skill.backbone.autocast_dtype = dtype
        return segment_quietly(skill, prepared, window, overlap, device, dtype, decoder=decoder)

    def dense() -> np.ndarray:
        skill.backbone.autocast_dtype = None
        return sliding_window_labels(
            skill,
            prepared.array,
            window,
            overlap=overlap,
            sw_batch_size=SW_BATCH_SIZE,
            device=device,
            dtype=None,
        )

    batch = _sample_batch(prepared, window, overlap)
    preparation = {}
    if decoder is not None and decoder.chosen is None:  # OpenVINO installed and allowed
        with measured(device) as preparation:  # once per skill in normal use: the IR stays on disk
            cached_ir(skill.decoder, channels, skill.backbone.config.dim)
    with measured(device) as fast_run:
        fast_labels, _ = fast()  # labels and the uncertainty map, as `mafm3 run` makes them
    with measured(device) as postprocess:
        labels_to_ct_grid(fast_labels, prepared, study.ct)
    record = {
        "skill": f"{PAPER_SEGMENTATION} (random weights)",
        "input_chw": list(prepared.array.shape),
        "window": list(window),
        "overlap": overlap,
        "sw_batch_size": SW_BATCH_SIZE,
        "precision_fast": _precision(dtype),
        "windows_total": total,
        "windows_decoded": decoded_windows(occupied, prepared.shape, window, overlap, fit_box=True),
        "occupied_fraction": round(float(occupied.mean()), 4),
        "fast": fast_run,
        "fast_s": fast_run["seconds"],
        "decoder": decoder.record() if decoder is not None else {"runtime": "torch"},
        "runtime_conversion_s": preparation.get("seconds", 0.0),
        "end_to_end_s": round(preprocessing["seconds"] + fast_run["seconds"] + postprocess["seconds"], 3),
        "end_to_end_note": "preprocess (CT and PET resampled onto the 0.75 x 0.75 x 1.5 mm box) + fast "
        "path + labels onto the CT grid; reading and writing are in `end_to_end`",
        "preprocess_s": preprocessing["seconds"],
        "postprocess_s": postprocess["seconds"],
    }
    if device.type == "cuda":
        dense()  # kernels chosen and workspaces allocated before the clock starts
        with measured(device) as dense_run:
            dense_labels = dense()
        record |= {
            "baseline": dense_run,
            "baseline_s": dense_run["seconds"],
            "baseline_scope": f"every one of the {total} windows, timed",
            "labels_differing_voxels": int((dense_labels != fast_labels).sum()),
            "occupied_voxels_differing": int((dense_labels != fast_labels)[occupied].sum()),
        }
    else:
        per_window, comparison = _baseline_sample(skill, batch, decoder, dtype, device)
        record |= {
            "baseline_s": round(per_window * total, 3),
            "baseline_seconds_per_window": round(per_window, 4),
            "baseline_scope": f"{len(batch)} of {total} windows timed (one batch of {SW_BATCH_SIZE}), "
            f"times {total} (CPU budget); the stitching of the windows is not counted",
            **comparison,
        }
    record["ratio"] = _ratio(record["baseline_s"], record["fast_s"])
    skill.backbone.autocast_dtype = dtype
    if device.type == "cpu":
        record["levers"] = levers(skill, prepared, batch, window, overlap, dtype, repeats)
    return record


def _sample_batch(prepared, window, overlap) -> torch.Tensor:
    """One batch of windows for the per-window timings: the occupied windows nearest the body's centre (what
    the fast path decodes), (N, C, *window) float32."""
    slices = window_slices(prepared.shape, window, overlap, prepared.occupied)
    centre = np.argwhere(prepared.occupied).mean(axis=0) if prepared.occupied.any() else np.zeros(3)
    slices.sort(key=lambda s: float(np.sum((np.array([x.start + x.stop for x in s]) / 2 - centre) ** 2)))
    chosen = slices[:SW_BATCH_SIZE] or window_slices(prepared.shape, window, overlap)[:SW_BATCH_SIZE]
    return torch.from_numpy(np.stack([prepared.array[(slice(None), *s)] for s in chosen]))


def _baseline_sample(skill, batch, decoder, dtype, device) -> tuple[float, dict]:
    """Seconds per window of the dense fp32 PyTorch path on `batch`, and how the fast path's decoder (its
    runtime, its precision) differs from it on the same windows: max |logit| and argmax voxels."""
    with torch.inference_mode():
        skill.backbone.autocast_dtype = None
        started = time.perf_counter()
        reference = skill(batch).float()
        per_window = (time.perf_counter() - started) / batch.shape[0]
        skill.backbone.autocast_dtype = dtype
        with autocast(device, dtype):
            _, hidden = skill.features(batch)
            runner = decoder.chosen if decoder is not None and decoder.chosen else "torch"
            ours = (decoder.runtimes[runner] if runner != "torch" else skill.decoder)(batch, hidden).float()
    return per_window, {
        "labels_compared_on": f"the {batch.shape[0]} timed windows, per window (fast path: {runner}, "
        f"{_precision(dtype)})",
        "labels_differing_voxels": int((ours.argmax(1) != reference.argmax(1)).sum()),
        "voxels_compared": int(reference[:, 0].numel()),
        "max_abs_logit_difference": round(float((ours - reference).abs().max()), 5),
    }


def levers(skill, prepared, batch, window, overlap, dtype, repeats) -> dict:
    """Each lever on its own against the dense fp32 PyTorch decoder, per window on the same batch (CPU)."""
    shape = prepared.shape
    total = window_count(shape, window, overlap)
    skip_only = decoded_windows(prepared.occupied, shape, window, overlap, fit_box=False)
    fitted = decoded_windows(prepared.occupied, shape, window, overlap, fit_box=True)
    with torch.inference_mode():
        skill.backbone.autocast_dtype = None
        _, hidden = skill.features(batch)
    decoder = skill.decoder

    cpu = torch.device("cpu")

    def decode(images=batch, states=hidden, precision=None):
        def run() -> None:
            with torch.inference_mode(), autocast(cpu, precision):
                decoder(images, states)

        return run

    record: dict = {
        "skip_empty_windows": {
            "windows": [total, skip_only],
            "ratio": _ratio(total, skip_only),
            "used": True,
            "note": "windows without a voxel above -500 HU or 1 SUV are not decoded; they are background",
        },
        "body_fitted_box": {
            "windows": [skip_only, fitted],
            "ratio": _ratio(skip_only, fitted),
            "used": True,
            "note": "windows laid over the box around the occupied voxels instead of the whole ROI box",
        },
    }
    paths = {"torch_fp32": decode()}
    if openvino_installed():
        runtime = OpenVinoDecoder(decoder, batch.shape[1], skill.backbone.config.dim, None)
        paths["openvino_fp32"] = lambda: runtime(batch, hidden)
        if dtype == torch.bfloat16:  # the policy's bf16: OpenVINO's bf16 kernels (AVX512-BF16, AMX)
            runtime_bf16 = OpenVinoDecoder(decoder, batch.shape[1], skill.backbone.config.dim, dtype)
            paths["openvino_bf16"] = lambda: runtime_bf16(batch, hidden)
    paths["torch_bf16"] = decode(precision=torch.bfloat16)
    images_cl = batch.contiguous(memory_format=torch.channels_last_3d)

    def with_channels_last() -> None:
        decoder.to(memory_format=torch.channels_last_3d)
        try:
            decode(images=images_cl)()
        finally:
            decoder.to(memory_format=torch.contiguous_format)

    paths["torch_fp32_channels_last_3d"] = with_channels_last
    threads = torch.get_num_threads()

    def one_thread() -> None:
        torch.set_num_threads(1)
        try:
            decode()()
        finally:
            torch.set_num_threads(threads)

    if threads > 1:
        paths["torch_fp32_1_thread"] = one_thread
    for size in (1, 2):
        if size < batch.shape[0]:
            paths[f"torch_fp32_batch_{size}"] = decode(images=batch[:size], states=[h[:size] for h in hidden])
    timings = best_of(paths, repeats, cpu)
    per_window = {
        name: timing["seconds"] / (int(name.rsplit("_", 1)[1]) if "_batch_" in name else batch.shape[0])
        for name, timing in timings.items()
    }
    base = per_window["torch_fp32"]
    record["decoder_seconds_per_window"] = {name: round(value, 4) for name, value in per_window.items()}
    if "openvino_fp32" in per_window:
        record["openvino"] = {
            "ratio": _ratio(base, per_window["openvino_fp32"]),
            "used": "when faster, decided per study by racing one window batch each (RaceDecoder)",
        }
    if "openvino_bf16" in per_window:
        record["openvino_bf16"] = {
            "ratio": _ratio(base, per_window["openvino_bf16"]),
            "used": "with bf16 (the policy) when faster than PyTorch bf16 (RaceDecoder)",
        }
    native = cpu_has_native_bf16()
    record["bf16"] = {
        "ratio": _ratio(base, per_window["torch_bf16"]),
        "cpu_native_bf16": native,
        "used": dtype == torch.bfloat16,
        "note": "the precision policy picks bf16 only on a CPU with AVX512-BF16 or AMX"
        + ("" if native else "; this CPU emulates bf16, so it is slower here"),
    }
    record["channels_last_3d"] = {
        "ratio": _ratio(base, per_window["torch_fp32_channels_last_3d"]),
        "used": False,
        "note": "kept off: InstanceNorm3d has no channels-last kernel",
    }
    if "torch_fp32_1_thread" in per_window:
        record["threads"] = {
            "ratio_all_vs_1": _ratio(per_window["torch_fp32_1_thread"], base),
            "threads": threads,
            "used": f"all {threads} (torch's default)",
        }
    record["batch_size"] = {
        "seconds_per_window": {
            str(size): round(per_window.get(f"torch_fp32_batch_{size}", base), 4)
            for size in (1, 2, batch.shape[0])
        },
        "used": SW_BATCH_SIZE,
    }
    record["note"] = (
        f"decoder only (about 98 % of a window), per window, {batch.shape[0]} windows, fastest of "
        f"{max(repeats, 1)}; torch_fp32 is the baseline of every ratio"
    )
    record["whole_study_estimate_s"] = {
        "dense_fp32": round(base * total, 1),
        "skip_and_fitted_box_fp32": round(base * fitted, 1),
        "best_decoder": round(min(per_window.values()) * fitted, 1),
    }
    return record
