"""Within-model LoRA (method-spec §2.1): named peft adapters on the CT-ViT attention projections.

Every loaded skill adds its own adapter, named after the skill, to the one shared encoder;
`activate_lora` selects one (or none) without reloading anything. The base projections stay peft's
`base_layer` and are never written: an adapter is applied unmerged, W x + (alpha / r) B A dropout(x), with
B = 0 at creation, so a fresh adapter is a no-op and switching adapters off gives the base features bit
for bit.

Merging for inference (`merged=True`) is done here, not with peft's `merge`/`unmerge`: those add and then
subtract B A in place in the base weight, which is not exact in floating point (measured on a 512 -> 256
projection, r 8, B ~ N(0, 0.02): after one merge and unmerge 15 % of the base weights differ by one ulp).
Here the merged weight W + (alpha / r) B A is a new tensor that takes the base weight's place while the
original tensor waits, untouched, in a non-persistent buffer (so it follows `.to()`); unmerging puts that
same tensor back. Measured on CPU (2 threads, float32, D 512): unmerged LoRA made the encoder 16 % slower
on four 96³ crops and 20 % slower on a 12³-token volume; merged runs exactly the base's operations.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import delete_adapter
from torch import nn

STAGES = ("spatial", "temporal")
UNMERGED_WEIGHT = "unmerged_weight"  # buffer of a merged projection holding its original weight
TARGETS = ("to_q", "to_kv", "to_out")


@dataclass(frozen=True)
class LoraSpec:
    """Where and how big a skill's LoRA is; stored in the skill manifest."""

    rank: int = 8
    alpha: float = 32.0  # the update is scaled by alpha / rank
    dropout: float = 0.2  # on the adapter's input, training only
    stages: tuple[str, ...] = ("spatial",)  # CT-ViT transformer stages whose attention blocks get LoRA
    blocks: tuple[int, ...] | None = None  # layer indices within each stage; None = every layer
    targets: tuple[str, ...] = TARGETS  # attention projections

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"`rank` must be a positive integer, got {self.rank!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"`dropout` must be in [0, 1), got {self.dropout}")
        for name, values, allowed in (("stages", self.stages, STAGES), ("targets", self.targets, TARGETS)):
            if not values or not set(values) <= set(allowed):
                raise ValueError(f"`{name}` must be a non-empty subset of {allowed}, got {values!r}")
        # Lists from JSON become tuples, so specs compare and hash by value.
        object.__setattr__(self, "stages", tuple(self.stages))
        object.__setattr__(self, "targets", tuple(self.targets))
        if self.blocks is not None:
            object.__setattr__(self, "blocks", tuple(self.blocks))

    def module_names(self, encoder: nn.Module) -> list[str]:
        """Full names of the targeted projections: `enc_{stage}_transformer.layers.{i}.1.{target}`.

        Raises ValueError when a requested stage or block is not in the encoder.
        """
        names = []
        for stage in self.stages:
            transformer = getattr(encoder, f"enc_{stage}_transformer", None)
            if transformer is None:
                raise ValueError(f"the encoder has no {stage} transformer for LoRA")
            depth = len(transformer.layers)
            blocks = range(depth) if self.blocks is None else self.blocks
            if any(not 0 <= block < depth for block in blocks):
                raise ValueError(
                    f"`blocks` {self.blocks} outside the {depth} layers of the {stage} transformer"
                )
            names += [
                f"enc_{stage}_transformer.layers.{block}.1.{target}"
                for block in blocks
                for target in self.targets
            ]
        return names


def attach_lora(encoder: nn.Module, adapter_name: str, spec: LoraSpec) -> None:
    """Add a fresh adapter `adapter_name` (A Kaiming-uniform, B = 0) to the targeted projections, in place.

    The base weights are not touched; load pretrained weights into the encoder before the first attach (G1).
    """
    if "." in adapter_name or not adapter_name:
        raise ValueError(f"`adapter_name` must be a non-empty name without dots, got {adapter_name!r}")
    if adapter_name in lora_adapter_names(encoder):
        raise ValueError(f"the encoder already has a LoRA adapter named {adapter_name!r}")
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.module_names(encoder),
        bias="none",
    )
    with warnings.catch_warnings():
        # peft warns that a second adapter on the same model is unusual: here it is the design.
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        inject_adapter_in_model(config, encoder, adapter_name=adapter_name)
    for name, parameter in encoder.named_parameters():
        if "lora_" in name:
            parameter.requires_grad_(False)  # trainable only while a trainer activates it
    activate_lora(encoder, None)


def detach_lora(encoder: nn.Module, adapter_name: str) -> None:
    """Remove an adapter and its tensors from the encoder (the others stay as they are)."""
    if adapter_name in lora_adapter_names(encoder):
        activate_lora(encoder, None)
        with warnings.catch_warnings():
            # peft picks another adapter to activate; `activate_lora(None)` below decides instead.
            warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
            delete_adapter(encoder, adapter_name, prefix="lora_")
        activate_lora(encoder, None)


def lora_adapter_names(encoder: nn.Module) -> set[str]:
    """Names of the adapters present anywhere in the encoder."""
    return {name for layer in _lora_layers(encoder) for name in layer.lora_A}


def activate_lora(
    encoder: nn.Module, adapter_name: str | None, trainable: bool = False, merged: bool = False
) -> None:
    """Make `adapter_name` the only adapter applied (None: no adapter, the bare backbone).

    Any merged weight is first replaced by the original base tensor. Layers without the adapter run their
    base projection alone. With `trainable`, the adapter's A and B require gradients; every other LoRA
    tensor is frozen either way. With `merged` (inference only), each adapted projection runs one matmul
    with W + (alpha / r) B A, computed now, out of place.
    """
    if merged and trainable:
        raise ValueError("a merged adapter cannot be trained: activate it with `merged=False`")
    for layer in _lora_layers(encoder):
        base = layer.get_base_layer()
        if hasattr(base, UNMERGED_WEIGHT):
            base.weight = nn.Parameter(getattr(base, UNMERGED_WEIGHT), requires_grad=False)
            delattr(base, UNMERGED_WEIGHT)
        present = adapter_name is not None and adapter_name in layer.lora_A
        layer.enable_adapters(present and not merged)
        if present:
            layer.set_adapter(adapter_name, inference_mode=not trainable)
        if present and merged:
            with torch.no_grad():
                merged_weight = base.weight + layer.get_delta_weight(adapter_name).to(base.weight.dtype)
            base.register_buffer(UNMERGED_WEIGHT, base.weight.detach(), persistent=False)
            base.weight = nn.Parameter(merged_weight, requires_grad=False)
        for name in layer.lora_A:
            wanted = present and trainable and name == adapter_name
            layer.lora_A[name].requires_grad_(wanted)
            layer.lora_B[name].requires_grad_(wanted)


def active_lora(encoder: nn.Module) -> str | None:
    """The adapter currently applied (merged or not), or None when the encoder runs bare."""
    for layer in _lora_layers(encoder):
        if not layer.disable_adapters or hasattr(layer.get_base_layer(), UNMERGED_WEIGHT):
            return layer.active_adapters[0]
    return None


def lora_state_dict(encoder: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """The adapter's tensors, keyed `<projection>.lora_A.weight` / `.lora_B.weight` (adapter name removed)."""
    tensors = {}
    for module_name, layer in _named_lora_layers(encoder):
        if adapter_name in layer.lora_A:
            tensors[f"{module_name}.lora_A.weight"] = layer.lora_A[adapter_name].weight
            tensors[f"{module_name}.lora_B.weight"] = layer.lora_B[adapter_name].weight
    return tensors


def load_lora_state_dict(encoder: nn.Module, adapter_name: str, tensors: dict[str, torch.Tensor]) -> None:
    """Copy saved tensors (keys as `lora_state_dict` writes them) into the adapter; key sets must agree."""
    own = lora_state_dict(encoder, adapter_name)
    if set(own) != set(tensors):
        missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
        raise ValueError(
            f"LoRA tensors do not fit adapter {adapter_name!r}: missing {missing}, unexpected {unexpected}"
        )
    with torch.no_grad():
        for key, tensor in tensors.items():
            if own[key].shape != tensor.shape:
                raise ValueError(
                    f"LoRA tensor {key} has shape {tuple(tensor.shape)}, expected {tuple(own[key].shape)}"
                )
            own[key].copy_(tensor)


def _named_lora_layers(encoder: nn.Module) -> list[tuple[str, LoraLayer]]:
    return [(name, module) for name, module in encoder.named_modules() if isinstance(module, LoraLayer)]


def _lora_layers(encoder: nn.Module) -> list[LoraLayer]:
    return [module for _, module in _named_lora_layers(encoder)]
