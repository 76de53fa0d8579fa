"""The network `mafm3 train` fits, and the folder it leaves: the frozen backbone with the skill (fresh from
its preset or loaded from the pack to fine-tune), or MONAI's UNETR from scratch; then the pack or the
baseline folder with its provenance."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from mafm3.config import backbones_dir
from mafm3.errors import MAFM3Error
from mafm3.training import prognosis
from mafm3.training.datasets import Case
from mafm3.training.options import TrainOptions
from mafm3.training.source import SkillSource
from mafm3.training.trainer import Network


@dataclass
class TrainingModel:
    """What `build_model` made: the network `fit` trains, and what the exported folder records of it."""

    network: Network
    backbone: dict | None  # {"id", "sha256"}; None for the baseline
    skill: object | None = None  # SkillModel
    unetr_arguments: dict | None = None
    time_bins: list[float] | None = None


def build_model(
    options: TrainOptions, source: SkillSource, train_cases: list[Case], device, dtype
) -> TrainingModel:
    from mafm3.engine.backbones import find_backbone
    from mafm3.model.skill_model import build_skill_model
    from mafm3.skills.backbone import load_backbone, read_manifest, resolve_backbone_dir
    from mafm3.skills.packs import load_skill
    from mafm3.skills.text_side import load_text_encoder
    from mafm3.training.baseline import build_unetr, unetr_arguments

    if options.baseline:
        window = source.preset.inference["window_voxels"]
        arguments = unetr_arguments(len(source.preset.modalities), window, options.baseline_size)
        return TrainingModel(
            Network.of_module(build_unetr(arguments).to(device)), None, unetr_arguments=arguments
        )
    if options.backbone:
        folder = resolve_backbone_dir(options.backbone)
    elif source.init_manifest is not None:
        folder = find_backbone(source.init_manifest.backbone["sha256"], source.init_manifest.backbone["id"])
    else:
        folder = only_backbone()
    manifest = read_manifest(folder)
    encoder = load_backbone(folder).to(device)
    encoder.autocast_dtype = dtype
    config = source.config
    needs_text = config.task == "prognosis" and config.prognosis.clinical_encoder == "report"
    text_encoder = load_text_encoder(folder).to(device) if needs_text else None
    if source.init is not None:
        skill = load_skill(source.init, encoder, manifest["sha256"], text_encoder=text_encoder).model.to(
            device
        )
    else:
        config = config.for_backbone(
            encoder.config.dim, text_dim=text_encoder.hidden_size if needs_text else None
        )
        if config.task == "prognosis":
            head = config.prognosis
            head = prognosis.authors_recipe(head) if options.recipe == "authors" else head
            head = prognosis.with_reports(head, source.skill_id, options.reports is not None)
            bins = prognosis.training_time_bins(train_cases, head)
            config = replace(config, prognosis=replace(head, num_time_bins=bins.numel()))
        skill = build_skill_model(config, encoder, source.skill_id, text_encoder=text_encoder).to(device)
        if config.task == "prognosis":
            skill.head.set_time_bins(bins.to(device))
    network = Network.of_skill(skill)
    check_only_skill_trains(skill, encoder, network.parameters)
    time_bins = skill.head.time_bins_days.tolist() if config.task == "prognosis" else None
    return TrainingModel(
        network, {"id": manifest["id"], "sha256": manifest["sha256"]}, skill, time_bins=time_bins
    )


def check_only_skill_trains(skill, backbone: torch.nn.Module, optimised: list[torch.nn.Parameter]) -> None:
    """The optimiser's parameters are exactly the skill's trainable ones, and nothing else requires a
    gradient (no backbone weight, no other skill's adapter). Raises RuntimeError otherwise (a bug)."""
    expected = {id(p) for p in skill.trainable_parameters()}
    learning = {id(p) for p in [*skill.parameters(), *backbone.parameters()] if p.requires_grad}
    if {id(p) for p in optimised} != expected or learning != expected:
        raise RuntimeError("parameters outside the skill would train: the backbone must stay frozen")


def only_backbone() -> Path:
    folders = sorted(path.parent for path in backbones_dir().glob("*/manifest.json"))
    if len(folders) != 1:
        names = ", ".join(folder.name for folder in folders) or "none"
        raise MAFM3Error(
            f"{len(folders)} backbones are imported ({names}); name the one to train on with --backbone."
        )
    return folders[0]


def inference_settings(options: TrainOptions, inference: dict) -> dict:
    """The preset's inference settings as the pack records them: segmentation windows blend as the recipe's
    validation blended them (`segmentation.RECIPES`)."""
    from mafm3.training.segmentation import RECIPES

    if options.task != "segmentation":
        return inference
    return {**inference, "blend": RECIPES[options.recipe].blend}


def export_trained(
    options: TrainOptions, source: SkillSource, model: TrainingModel, out: Path, training: dict, metrics: dict
) -> dict:
    from mafm3.skills.packs import export_pack
    from mafm3.training.baseline import export_baseline

    if options.baseline:
        return export_baseline(
            model.network.module,
            model.unetr_arguments,
            out,
            preset=source.preset,
            name=source.skill_id,
            version=source.version,
            training=training,
            metrics=metrics,
        )
    manifest = export_pack(
        model.skill,
        out,
        preset=source.preset,
        version=source.version,
        backbone_id=model.backbone["id"],
        backbone_sha256=model.backbone["sha256"],
        training=training,
        metrics=metrics,
        description=source.preset.description,
        inference=inference_settings(options, source.preset.inference),
    )
    return manifest.to_dict()
