"""Skills: manifests, packs (manifest + safetensors), presets and the registry."""

TASKS = ("segmentation", "prognosis", "classification")  # what a skill does
