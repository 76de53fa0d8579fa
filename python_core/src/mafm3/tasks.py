"""What a skill does and where it runs: the tasks a manifest may name, those `mafm3 train` and `mafm3 eval`
handle, and the devices and precisions a run may ask for.

A shared leaf (no torch, nothing of the project), so that `model`, `skills`, the engine and the commands'
choices all read the one list.
"""

TASKS = ("segmentation", "prognosis", "classification")
TRAINABLE_TASKS = ("segmentation", "prognosis")  # classification is CT-CLIP's zero-shot path: nothing trains
# How `mafm3 train` trains: "ours" (our corrected defaults) or "authors" (the authors' choices where a recipe
# item is not a preset field; the `-authors` presets hold the rest; README "Reproducing the paper").
RECIPES = ("ours", "authors")
DEVICES = ("auto", "cuda", "mps", "cpu")  # auto: CUDA, then MPS, then CPU (`engine.device`)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # autocast dtype; auto: the policy of `engine.device`
