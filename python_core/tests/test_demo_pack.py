"""Bundling the built demo into the package: packs copied whole, held-out metrics recorded, nothing stale."""

import json
from pathlib import Path

import pytest
from tiny_models import export, tiny_preset

from mafm3.config import BUNDLED_DIR
from mafm3.demo.backbone import DEMO_BACKBONE_ID
from mafm3.demo.pack import BASELINE, DEMO_SKILLS, PROGNOSIS_HELDOUT, bundle_demo, heldout_record
from mafm3.errors import MAFM3Error
from mafm3.model.skill_model import build_skill_model
from mafm3.skills.backbone import load_backbone
from mafm3.skills.packs import verify_pack

SEGMENTATION_SUMMARY = {
    "n_cases": 12,
    "classes": {
        "GTVp": {
            "dice_mean": 0.81,
            "dice_mean_ci": {"low": 0.78, "high": 0.84},
            "dice_aggregated": 0.84,
            "hd95_mm_median": 4.0,
            "n_evaluated": 12,
        },
        "GTVn": {"dice_mean": 0.62, "dice_aggregated": 0.70, "hd95_mm_median": 9.5},
    },
}
PROGNOSIS_SUMMARY = {
    "n_cases": 12,
    "harrell_c": 0.74,
    "harrell_c_ci": {"low": 0.6},
    "harrell_c_lifelines": 0.73,
    "uno_c": 0.71,
    "extra": 1,
}
# Four held-out patients: (id, days, relapse, true log-hazard). Comparable pairs: A-B, A-C, A-D (A's event at
# 100 first), C-D (C's event at 300 before D's censoring at 400): 4. The true log-hazard orders A-B, A-C, A-D
# rightly and C-D wrongly: C = 3/4.
HELDOUT = [("A", 100, 1, 1.5), ("B", 200, 0, -0.5), ("C", 300, 1, -1.0), ("D", 400, 0, 0.2)]


def test_heldout_record_keeps_the_headline_numbers():
    record = heldout_record({"task": "segmentation", "metrics": SEGMENTATION_SUMMARY})
    assert record == {
        "n_cases": 12,
        "GTVp_dice_mean": 0.81,
        "GTVp_dice_mean_ci": {"low": 0.78, "high": 0.84},
        "GTVp_dice_aggregated": 0.84,
        "GTVp_hd95_mm_median": 4.0,
        "GTVn_dice_mean": 0.62,
        "GTVn_dice_aggregated": 0.70,
        "GTVn_hd95_mm_median": 9.5,
    }
    assert heldout_record({"task": "prognosis", "metrics": PROGNOSIS_SUMMARY}) == {
        "n_cases": 12,
        "harrell_c": 0.74,
        "harrell_c_ci": {"low": 0.6},
        "harrell_c_lifelines": 0.73,
        "uno_c": 0.71,
    }


@pytest.fixture()
def build(backbone_manifest, tmp_path):
    """A build folder as `make demo-pack` leaves it, with tiny packs standing in for the demo skills."""
    build = tmp_path / "build"
    backbone = load_backbone(backbone_manifest["path"])
    (build / "home" / "backbones").mkdir(parents=True)
    backbone_manifest["path"].rename(build / "home" / "backbones" / DEMO_BACKBONE_ID)
    for skill_id in DEMO_SKILLS:
        export(
            build_skill_model(tiny_preset().config, backbone, skill_id.replace("-", "")),
            build / skill_id,
            backbone_manifest,
        )
        summary = PROGNOSIS_SUMMARY if "prognosis" in skill_id else SEGMENTATION_SUMMARY
        (build / f"eval-{skill_id}.json").write_text(json.dumps({"metrics": summary}))
    (build / f"eval-{BASELINE}.json").write_text(json.dumps({"metrics": SEGMENTATION_SUMMARY}))
    rows = ["case_id,rfs_days,relapse,risk"] + [
        f"{i},{days},{relapse},0.5" for i, days, relapse, _ in HELDOUT
    ]
    (build / "eval-demo-prognosis_per_case.csv").write_text("\n".join(rows) + "\n")
    (build / PROGNOSIS_HELDOUT).mkdir()
    truth = ["PatientID,seed,true_log_hazard"] + [f"{i},0,{eta}" for i, _, _, eta in HELDOUT]
    (build / PROGNOSIS_HELDOUT / "demo_truth.csv").write_text("\n".join(truth) + "\n")
    return build


def test_bundle_copies_backbone_and_packs_and_records_the_heldout_metrics(build, tmp_path):
    assets = tmp_path / "assets"
    (assets / "skills" / "stale-1.0.0").mkdir(parents=True)  # an older bundle must not survive
    table = bundle_demo(build, assets)
    assert not (assets / "skills" / "stale-1.0.0").exists()
    assert (assets / "backbones" / DEMO_BACKBONE_ID / "weights.safetensors").is_file()
    assert json.loads((assets / "demo_metrics.json").read_text()) == table
    assert table[BASELINE]["GTVp_dice_mean"] == 0.81
    assert table["demo-prognosis"]["true_log_hazard_harrell_c"] == pytest.approx(3 / 4)
    packs = sorted((assets / "skills").iterdir())
    assert len(packs) == len(DEMO_SKILLS)
    for folder in packs:
        manifest = verify_pack(folder)  # weights unchanged: the sha256 in the manifest still holds
        assert manifest.metrics["heldout"]["n_cases"] == 12


def test_bundle_refuses_a_build_without_its_evaluations(build, tmp_path):
    (build / f"eval-{BASELINE}.json").unlink()
    with pytest.raises(MAFM3Error, match="make demo-pack"):
        bundle_demo(build, tmp_path / "assets")
    assert sorted(p.name for p in tmp_path.iterdir() if "assets" in p.name) == []


def test_the_readme_quotes_the_shipped_prognosis_measurement_and_its_ceiling():
    shipped = json.loads((BUNDLED_DIR / "demo_metrics.json").read_text())["demo-prognosis"]
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    ci = shipped["harrell_c_ci"]
    assert f"Harrell's C **{shipped['harrell_c']:.3f}** (95 % CI {ci['low']:.3f}–{ci['high']:.3f})" in readme
    assert f"{shipped['n_cases']} patients ({shipped['n_events']} relapses)" in readme
    assert f"at C **{shipped['true_log_hazard_harrell_c']:.3f}**, the ceiling" in readme
    assert shipped["n_cases"] >= 400
