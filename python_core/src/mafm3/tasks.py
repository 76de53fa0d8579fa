"""What a skill does: the tasks a manifest may name, and those `mafm3 train` and `mafm3 eval` handle.

A shared leaf (no torch, nothing of the project), so that `model`, `skills`, the engine and the commands'
choices all read the one list.
"""

TASKS = ("segmentation", "prognosis", "classification")
TRAINABLE_TASKS = ("segmentation", "prognosis")  # classification is CT-CLIP's zero-shot path: nothing trains
# How `mafm3 train` trains: "ours" (our corrected defaults) or "authors" (the authors' choices where a recipe
# item is not a preset field; the `-authors` presets hold the rest; README "Reproducing the paper").
RECIPES = ("ours", "authors")
