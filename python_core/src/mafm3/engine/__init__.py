"""Inference: device policy, warm backbones, skill activation, sliding windows, results on the CT's grid."""

from mafm3.engine.inference import Cancelled
from mafm3.engine.runner import Engine, RunRequest

__all__ = ["Cancelled", "Engine", "RunRequest"]
