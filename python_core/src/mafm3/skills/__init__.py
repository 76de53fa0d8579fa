"""Skills: manifests, packs (manifest + safetensors), presets and the registry."""
