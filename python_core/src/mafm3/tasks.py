"""What a skill does: the tasks a manifest may name, and those `mafm3 train` and `mafm3 eval` handle.

A shared leaf (no torch, nothing of the project), so that `model`, `skills`, the engine and the commands'
choices all read the one list.
"""

TASKS = ("segmentation", "prognosis", "classification")
TRAINABLE_TASKS = ("segmentation", "prognosis")  # classification is CT-CLIP's zero-shot path: nothing trains
