"""The benchmark's measurements. Each function returns a JSON-ready dict; ratios are baseline / ours, so a
ratio above 1 is in our favour.
"""

from __future__ import annotations

import os
import statistics
import sys
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from mafm3.bench.fixtures import BenchSkills, StudyFiles
from mafm3.bench.measure import best_of, measured, run_child
from mafm3.engine.inference import SW_BATCH_SIZE, StageClock, segment, sliding_window_labels
from mafm3.engine.runner import Engine, RunRequest
from mafm3.imaging.preprocess import (
    OUTSIDE_VALUE,
    PreparedInput,
    PreprocessingConfig,
    model_grid,
    prepare_input,
    to_model_array,
)
from mafm3.imaging.resample import Grid
from mafm3.imaging.study import Study
from mafm3.model.attention import reference_attention
from mafm3.model.ctvit import CTViT, CTViTConfig
from mafm3.model.skill_model import SegmentationSkill, build_skill_model
from mafm3.skills.presets import PRESETS
from mafm3.training.baseline import build_unetr, unetr_arguments

STAGES = ("read", "load", "preprocess", "backbone", "head", "postprocess", "write")
PAPER_SEGMENTATION = "hecktor-seg-petct"
PAPER_INPUT = (1, 1, 240, 480, 480)  # CT-CLIP's input (B, C, T, H, W): 24 slabs of 24 x 24 tokens
CPU_CTVIT_INPUT = (1, 1, 40, 480, 480)  # the same 576-token slabs, 4 of them instead of 24
SKILL_SWITCHES = 10
MICRO_REPEATS = 3  # at least this many runs for the measurements that take seconds or less


def ratio(baseline_s: float, ours_s: float) -> float:
    return round(baseline_s / ours_s, 3) if ours_s > 0 else float("nan")


def study_request(files: StudyFiles, skill_ids: list[str], device: str, precision: str) -> RunRequest:
    return RunRequest(
        ct=str(files.ct),
        pet=str(files.pet),
        clinical=str(files.clinical),
        skills=list(skill_ids),
        pet_units="suv",
        device=device,
        precision=precision,
    )


def timed_run(engine: Engine, request: RunRequest, out_dir: Path, device: torch.device) -> dict:
    """`run_and_write` of one study: per-stage seconds (the engine's clock) and the run's memory."""
    with measured(device) as record:
        result, _ = engine.run_and_write(request, out_dir)
    stages = {stage: result.timings_s.get(stage, 0.0) for stage in STAGES}
    return {"end_to_end_s": record.pop("seconds"), "stages_s": stages, **record}


def cli_run(files: StudyFiles, skills: BenchSkills, device: str, precision: str, out_dir: Path) -> dict:
    """`mafm3 run` in a fresh process: interpreter start, imports and loading included; its own peak RSS."""
    command = [sys.executable, "-m", "mafm3", "run", "--ct", str(files.ct), "--pet", str(files.pet)]
    command += ["--pet-units", "suv", "--clinical", str(files.clinical), "--skill", *skills.ids()]
    command += ["--out", str(out_dir), "--device", device, "--precision", precision, "--quiet"]
    record = run_child(command, dict(os.environ))
    if record["exit_code"] != 0:
        raise RuntimeError(f"`mafm3 run` failed in the benchmark: {record['stderr_tail']}")
    del record["stderr_tail"]
    return record


def combined_vs_separate(
    skills: BenchSkills, files: StudyFiles, device: torch.device, precision: str, out: Path, repeats: int
) -> dict:
    """(d) segmentation + prognosis in one run against one run per skill, a fresh engine for every run."""
    seg, prog = skills.ids()
    plans = {"combined": [seg, prog], "segmentation_only": [seg], "prognosis_only": [prog]}
    runs: dict[str, list[dict]] = {name: [] for name in plans}
    for round_number in range(repeats):
        for name, ids in plans.items():
            request = study_request(files, ids, str(device), precision)
            target = out / f"d-{name}-{round_number}"
            runs[name].append(timed_run(skills.engine(str(device)), request, target, device))
    best = {name: min(found, key=lambda run: run["end_to_end_s"]) for name, found in runs.items()}
    separate = best["segmentation_only"]["end_to_end_s"] + best["prognosis_only"]["end_to_end_s"]
    return {
        **best,
        "separate_s": round(separate, 4),
        "ratio": ratio(separate, best["combined"]["end_to_end_s"]),
        "note": "fresh Engine per run (backbone and skills loaded from disk each time), reading included",
    }


def skill_switch(skills: BenchSkills, device: torch.device) -> dict:
    """(c) activating an already loaded skill on the warm backbone, against loading backbone + skill."""
    engine = skills.engine(str(device))
    with measured(device) as cold:
        engine.activate(skills.segmentation, device)  # backbone and pack read, skill built, LoRA merged
    with measured(device) as first:
        engine.activate(skills.prognosis, device)  # the second pack onto the warm backbone
    switches = []
    for _ in range(SKILL_SWITCHES):
        for skill in (skills.segmentation, skills.prognosis):
            with measured(device) as switch:
                engine.activate(skill, device)
            switches.append(switch["seconds"])
    median = statistics.median(switches)
    return {
        "cold_load_s": cold["seconds"],
        "pack_onto_warm_backbone_s": first["seconds"],
        "switch_ms_median": round(1000 * median, 2),
        "switch_ms_min": round(1000 * min(switches), 2),
        "switches": len(switches),
        "ratio": ratio(cold["seconds"], median),
    }


def segment_quietly(skill, prepared, window, overlap, device, dtype, **options) -> np.ndarray:
    """`inference.segment` as the engine runs it, without progress or cancellation; `options` go to it."""
    return segment(
        skill,
        prepared,
        window,
        overlap=overlap,
        sw_batch_size=SW_BATCH_SIZE,
        device=device,
        dtype=dtype,
        clock=StageClock(device),
        progress=lambda *_: None,
        cancel=None,
        **options,
    )


def _parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def compare_with_unetr(
    skill: SegmentationSkill,
    prepared: PreparedInput,
    window: tuple[int, ...],
    overlap: float,
    device: torch.device,
    dtype: torch.dtype | None,
    repeats: int,
) -> dict:
    """Our skill and MONAI's UNETR (paper size) over the same prepared input with the same Gaussian sliding
    window, batch of windows, precision and on-device argmax to uint8."""
    channels = prepared.array.shape[0]
    unetr = build_unetr(unetr_arguments(channels, window, "paper")).to(device).eval()

    def ours() -> tuple[np.ndarray, np.ndarray]:  # labels and the uncertainty map: more work than UNETR's
        return segment_quietly(skill, prepared, window, overlap, device, dtype)

    def baseline() -> np.ndarray:
        return sliding_window_labels(
            unetr,
            prepared.array,
            window,
            overlap=overlap,
            sw_batch_size=SW_BATCH_SIZE,
            device=device,
            dtype=dtype,
        )

    if device.type == "cuda":  # kernels chosen and workspaces allocated before the clock starts
        ours(), baseline()
    record = {
        "input_chw": list(prepared.array.shape),
        "window": list(window),
        "overlap": overlap,
        "sw_batch_size": SW_BATCH_SIZE,
        **best_of({"ours": ours, "unetr": baseline}, repeats, device),
        "ours_parameters": _parameters(skill) + _parameters(skill.backbone),
        "unetr_parameters": _parameters(unetr),
    }
    record["ratio"] = ratio(record["unetr"]["seconds"], record["ours"]["seconds"])
    return record


def shipped_segmentation_vs_unetr(
    engine: Engine, skills: BenchSkills, study: Study, device: torch.device, dtype, repeats: int
) -> dict:
    """(a) the PET/CT skill the benchmark runs, at its own window, against UNETR at that window."""
    manifest = skills.segmentation.manifest
    loaded, backbone = engine.activate(skills.segmentation, device)
    backbone.encoder.autocast_dtype = dtype
    prepared = prepare_input(
        study, PreprocessingConfig.from_dict(manifest.preprocessing), skill_name=manifest.id
    )
    window = tuple(manifest.inference["window_voxels"])
    overlap = float(manifest.inference.get("overlap", 0.25))
    record = compare_with_unetr(loaded.model, prepared, window, overlap, device, dtype, repeats)
    return {"skill": manifest.id, **record}


def paper_segmentation_skill(device: torch.device, dtype) -> SegmentationSkill:
    """The paper's PET/CT segmentation skill on a paper-size CT-ViT (D 512), random weights, LoRA merged."""
    preset = PRESETS[PAPER_SEGMENTATION]
    backbone = CTViT(preset.backbone).to(device).eval().requires_grad_(False)
    backbone.autocast_dtype = dtype
    config = preset.config.for_backbone(preset.backbone.dim)
    skill = build_skill_model(config, backbone, "paper-seg-petct").eval()
    skill.activate(merged=True)
    return skill


def paper_segmentation_vs_unetr(
    skill: SegmentationSkill, study: Study, device: torch.device, dtype, repeats: int
) -> dict:
    """(a) at the paper's sizes: 0.75 x 0.75 x 1.5 mm, 360 mm ROI (240 x 480 x 480), 96³ windows. On a CPU
    only the central window is run (the full sliding window takes minutes there)."""
    preset = PRESETS[PAPER_SEGMENTATION]
    with measured(device) as preprocessing:
        prepared = prepare_input(
            study, PreprocessingConfig.from_dict(preset.preprocessing), skill_name="paper"
        )
    window = tuple(preset.inference["window_voxels"])
    scope = "full input"
    if device.type != "cuda":
        start = [(size - length) // 2 for size, length in zip(prepared.shape, window, strict=True)]
        crop = tuple(slice(s, s + length) for s, length in zip(start, window, strict=True))
        prepared = replace(prepared, array=np.ascontiguousarray(prepared.array[(slice(None), *crop)]))
        scope = f"central {'x'.join(map(str, window))} window only (CPU budget)"
    overlap = float(preset.inference["overlap"])
    record = compare_with_unetr(skill, prepared, window, overlap, device, dtype, repeats)
    return {
        "skill": f"{PAPER_SEGMENTATION} (random weights)",
        "scope": scope,
        "preprocess": preprocessing,
        **record,
    }


def ctvit_vs_reference(device: torch.device, dtype, repeats: int) -> dict:
    """(b) the CT-ViT feature path as the engine runs it (fused attention, cached position bias, the precision
    policy) against the plain reference path (einsum attention, bias recomputed, float32)."""
    shape = PAPER_INPUT if device.type == "cuda" else CPU_CTVIT_INPUT
    config = CTViTConfig()
    encoder = CTViT(config).to(device).eval().requires_grad_(False)
    slabs = shape[2] // config.temporal_patch_size
    slab_tokens = (shape[3] // config.patch_size) * (shape[4] // config.patch_size)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)

    tokens = {}

    def forward(name: str, precision, reference: bool) -> Callable[[], None]:
        def run() -> None:
            encoder.autocast_dtype = precision
            with torch.inference_mode(), reference_attention() if reference else nullcontext():
                tokens[name] = encoder.forward_features(x)[0]

        return run

    paths = {"fused": forward("fused", dtype, False), "reference": forward("reference", None, True)}
    if dtype is not None:
        paths["fused_fp32"] = forward("fused_fp32", None, False)
    paths["fused"]()  # computes and caches the position bias: the state every later study finds
    if device.type == "cuda":
        paths["reference"]()
    record = {
        "encoder": "CT-CLIP CT-ViT layout (D 512, 8 heads, 4 spatial layers), random weights",
        "input": list(shape),
        "scope": "paper input"
        if shape == PAPER_INPUT
        else f"{slabs} slabs of {slab_tokens} tokens (CPU budget)",
        "precision": str(dtype).removeprefix("torch.") if dtype is not None else "fp32",
        **best_of(paths, max(repeats, MICRO_REPEATS), device),
    }
    reference_tokens = tokens["reference"].float()
    difference = tokens["fused"].float() - reference_tokens
    record["max_abs_difference"] = round(float(difference.abs().max()), 5)
    record["relative_difference"] = float(f"{float(difference.norm() / reference_tokens.norm()):.3g}")  # L2
    record["ratio"] = ratio(record["reference"]["seconds"], record["fused"]["seconds"])
    return record


def lora_merged_vs_unmerged(skill: SegmentationSkill, device: torch.device, dtype, repeats: int) -> dict:
    """The skill's feature path on one batch of windows with its LoRA merged (what the engine runs) and
    applied unmerged by peft."""
    channels = skill.config.patch_embedding.channels
    window = tuple(PRESETS[PAPER_SEGMENTATION].inference["window_voxels"])
    x = torch.randn((SW_BATCH_SIZE, channels, *window), generator=torch.Generator().manual_seed(1)).to(device)

    def features() -> None:
        with torch.inference_mode():
            skill.features(x)

    runs: dict[str, list[dict]] = {"unmerged": [], "merged": []}
    for _ in range(max(repeats, MICRO_REPEATS)):  # the two states take turns, as `best_of` does
        for merged in (False, True):
            skill.activate(merged=merged)
            with measured(device) as record:
                features()
            runs["merged" if merged else "unmerged"].append(record)
    timings = {name: min(found, key=lambda run: run["seconds"]) for name, found in runs.items()}
    return {
        "input": list(x.shape),
        "lora_rank": skill.config.lora.rank,
        "precision": str(dtype).removeprefix("torch.") if dtype is not None else "fp32",
        **timings,
        "ratio": ratio(timings["unmerged"]["seconds"], timings["merged"]["seconds"]),
    }


def torch_resample(image: sitk.Image, grid: Grid, axis_order: str, outside: float, device) -> torch.Tensor:
    """`to_model_array(image, grid, axis_order, "linear", outside)` with torch's `grid_sample` on `device`.

    Measurement only. The voxel centres of `grid` are mapped to continuous source indices j = A i + b
    (A, b from both grids' origin, spacing and direction), then to `grid_sample`'s [-1, 1] coordinates.
    Points more than half a voxel beyond the source get `outside`, as SimpleITK does.
    """
    source = Grid.of(image)
    with warnings.catch_warnings():  # the view is only read: torch's warning about read-only arrays is moot
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        volume = torch.from_numpy(sitk.GetArrayViewFromImage(image)).to(device, torch.float32)  # (Z, Y, X)
    to_index = np.diag(1 / np.asarray(source.spacing)) @ source.matrix.T
    a = to_index @ grid.matrix @ np.diag(grid.spacing)
    b = to_index @ (np.asarray(grid.origin) - np.asarray(source.origin))
    source_scale = np.diag(2 / np.maximum(np.asarray(source.size) - 1, 1))
    target_unscale = np.diag(np.maximum(np.asarray(grid.size) - 1, 1) / 2)
    linear = source_scale @ a @ target_unscale
    offset = source_scale @ (a @ target_unscale @ np.ones(3) + b) - 1
    theta = torch.tensor(np.hstack([linear, offset[:, None]])[None], dtype=torch.float32, device=device)
    x, y, z = grid.size
    points = F.affine_grid(theta, [1, 1, z, y, x], align_corners=True)  # (1, Z, Y, X, 3) as (x, y, z)
    sampled = F.grid_sample(
        volume[None, None], points, mode="bilinear", padding_mode="border", align_corners=True
    )
    # SimpleITK's inside test on continuous indices j: -0.5 <= j <= size - 0.5 along every axis. A point on
    # a bound can fall either way (float32 here, double there): an edge voxel of the box, inside for one.
    size = torch.tensor(source.size, device=device, dtype=torch.float32)
    index = (points + 1) * (size - 1).clamp(min=1) / 2
    inside = ((index >= -0.5) & (index <= size - 0.5)).all(dim=-1)
    resampled = torch.where(inside, sampled[0], torch.tensor(outside, device=device))[0]
    return resampled.permute(*("zyx".index(axis) for axis in axis_order))


def resampling(study: Study, config: PreprocessingConfig, device: torch.device, repeats: int) -> dict:
    """SimpleITK on the CPU (what the engine does) against torch `grid_sample` on `device`, for every input
    channel of a skill's preprocessing; the torch time includes copying the source volumes to the device."""
    grid, _ = model_grid(study, config)
    images = {"ct": study.ct, "pet": study.pet}

    def with_simpleitk() -> list[np.ndarray]:
        return [
            to_model_array(images[c], grid, config.axis_order, "linear", OUTSIDE_VALUE[c])
            for c in config.channels
        ]

    def with_torch() -> list[torch.Tensor]:
        return [
            torch_resample(images[c], grid, config.axis_order, OUTSIDE_VALUE[c], device)
            for c in config.channels
        ]

    with_torch()  # warm-up (CUDA kernels, allocator)
    record = {
        "grid_xyz": list(grid.size),
        "spacing_mm": list(grid.spacing),
        "channels": list(config.channels),
        **best_of(
            {"simpleitk_cpu": with_simpleitk, "torch": with_torch}, max(repeats, MICRO_REPEATS), device
        ),
        "torch_device": device.type,
    }
    reference, ours = with_simpleitk()[0], with_torch()[0].cpu().numpy()
    outside = OUTSIDE_VALUE["ct"]
    both = (reference != outside) & (ours != outside)
    record["ct_max_abs_difference_hu"] = round(float(np.abs(reference - ours)[both].max(initial=0.0)), 4)
    record["ct_edge_voxels_inside_for_one_only"] = int(((reference != outside) != (ours != outside)).sum())
    record["ratio"] = ratio(record["simpleitk_cpu"]["seconds"], record["torch"]["seconds"])
    return record


def scaling_run(
    engine: Engine, files: StudyFiles, skills: BenchSkills, device: torch.device, precision: str, out: Path
) -> dict:
    """(e) one warm segmentation + prognosis run on a study of another size."""
    request = study_request(files, skills.ids(), str(device), precision)
    return {"study": files.record, **timed_run(engine, request, out, device)}
