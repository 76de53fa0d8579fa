"""The demo that ships inside mafm3: the demo backbone, three demo skills and their held-out measurements.

`make demo-pack` builds everything under `build/demo-pack/` with the public commands (`mafm3 demo
make-backbone`, `make-cohort`, `mafm3 train`, `mafm3 eval`), then `bundle_demo` copies the result into the
package (`mafm3.config.BUNDLED_DIR`): the backbone under `backbones/`, each pack under
`skills/<id>-<version>/` with its held-out metrics recorded in its manifest, and `demo_metrics.json`, the
table the README quotes.
The held-out cohorts' seeds are never used in training. Beside the prognosis skill's C on its 400 held-out
patients stands the C of the generator's true log-hazard on the same patients (`demo_truth.csv`, which no
skill reads): the best any model could do on those patients, given the survival noise.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np

from mafm3.demo.backbone import DEMO_BACKBONE_ID
from mafm3.demo.constants import DEMO_NOTICE
from mafm3.errors import MAFM3Error
from mafm3.skills.manifest import SkillManifest
from mafm3.skills.packs import verify_pack

DEMO_SKILLS = ("demo-seg-ct", "demo-seg-petct", "demo-prognosis")
BASELINE = "unetr-baseline-petct"  # MONAI UNETR from scratch, PET/CT, same data and budget
PROGNOSIS_HELDOUT = "prognosis-heldout"  # the build's held-out prognosis cohort


def heldout_record(evaluation: dict) -> dict:
    """The headline numbers of a `mafm3 eval` result (segmentation or prognosis), for manifests, README."""
    summary = evaluation["metrics"]
    if "classes" not in summary:
        wanted = (
            "n_cases",
            "n_events",
            "harrell_c",
            "harrell_c_ci",
            "harrell_c_lifelines",
            "uno_c",
            "integrated_brier_score",
        )
        return {key: summary[key] for key in wanted if key in summary}
    record = {"n_cases": summary["n_cases"]}
    for name, values in summary["classes"].items():
        for key in ("dice_mean", "dice_mean_ci", "dice_aggregated", "hd95_mm_median"):
            if key in values:
                record[f"{name}_{key}"] = values[key]
    return record


def true_log_hazard_c(per_case_csv: str | Path, truth_csv: str | Path) -> float:
    """Harrell's C (scikit-survival, as `mafm3 eval`) of the generator's true log-hazard on the patients of a
    prognosis evaluation's per-case CSV (case_id, rfs_days, relapse), read from the cohort's
    demo_truth.csv."""
    from sksurv.metrics import concordance_index_censored

    with open(truth_csv, newline="") as file:
        truth = {row["PatientID"]: float(row["true_log_hazard"]) for row in csv.DictReader(file)}
    with open(per_case_csv, newline="") as file:
        rows = list(csv.DictReader(file))
    event = np.array([row["relapse"] == "1" for row in rows])
    time = np.array([float(row["rfs_days"]) for row in rows])
    log_hazard = np.array([truth[row["case_id"]] for row in rows])
    return float(concordance_index_censored(event, time, log_hazard)[0])


def bundle_demo(build: str | Path, assets: str | Path) -> dict:
    """Copy the built demo (`build`) into `assets` (replaced whole) and return the metrics table.

    build: holds `home/backbones/<DEMO_BACKBONE_ID>/`, one pack folder per demo skill, `eval-<id>.json` (and
    its per-case CSV) for each skill and for the baseline, `heldout/` and `prognosis-heldout/` (the
    evaluation cohorts).
    """
    build, assets = Path(build), Path(assets)
    table: dict = {
        "notice": DEMO_NOTICE,
        "heldout_cohorts": "never trained on: make-cohort --n 12 --seed 2 (segmentation), --n 400 --seed 4 "
        "--size tiny (prognosis)",
    }
    missing = [name for name in (*DEMO_SKILLS, BASELINE) if not (build / f"eval-{name}.json").is_file()]
    if missing:
        raise MAFM3Error(f"The evaluation of {missing[0]} is missing in {build}; run `make demo-pack` first.")
    staged = assets.with_name(f".{assets.name}.staging")
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(build / "home" / "backbones" / DEMO_BACKBONE_ID, staged / "backbones" / DEMO_BACKBONE_ID)
    for skill_id in (*DEMO_SKILLS, BASELINE):
        table[skill_id] = heldout_record(json.loads((build / f"eval-{skill_id}.json").read_text()))
        if skill_id == "demo-prognosis":
            table[skill_id]["true_log_hazard_harrell_c"] = true_log_hazard_c(
                build / f"eval-{skill_id}_per_case.csv", build / PROGNOSIS_HELDOUT / "demo_truth.csv"
            )
        if skill_id == BASELINE:
            continue  # measured side by side, not shipped: it is not a skill of the backbone
        manifest = verify_pack(build / skill_id)
        manifest.metrics = {**manifest.metrics, "heldout": table[skill_id]}
        target = staged / "skills" / manifest.folder_name
        shutil.copytree(build / skill_id, target)
        manifest.write(target)
        SkillManifest.read(target)  # the rewritten manifest still describes the same weights
    (staged / "demo_metrics.json").write_text(json.dumps(table, indent=2) + "\n")
    shutil.rmtree(assets, ignore_errors=True)
    staged.rename(assets)
    return table
