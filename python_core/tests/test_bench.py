"""`mafm3 bench`: every section and ratio of the report on the tiny study, and the gauges it is built on.

No timing is asserted. The skills and the paper-size comparisons are shrunk here (coarser preprocessing and
smaller windows through the presets, a smaller CT-ViT input) so the whole benchmark runs in about a minute;
the code paths are the ones `mafm3 bench` takes. Oracles: SimpleITK's resampling for the torch resampler
(same trilinear rule); a child that touches a known number of bytes for the RSS gauges.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from imaging_phantoms import phantom_ct
from numeric_precision import relative_tolerance

import mafm3.bench.fixtures
from mafm3.bench import sections
from mafm3.bench.measure import GB, best_of, measured, run_child
from mafm3.cli import main
from mafm3.imaging.preprocess import PreprocessingConfig, model_grid, to_model_array
from mafm3.imaging.study import study_from_images
from mafm3.skills.presets import PRESETS

SECTIONS = (
    "machine", "settings", "skills", "study", "end_to_end", "a_segmentation_vs_unetr", "b_ctvit_vs_reference",
    "c_skill_switch", "d_combined_vs_separate", "e_scaling", "hot_path", "process_peak_rss_gb", "ratios",
    "targets",
)  # fmt: skip
STAGES = {"read", "load", "preprocess", "backbone", "head", "postprocess", "write"}


def shrunk(name: str, spacing_mm: float, window: int, **inference) -> object:
    preset = PRESETS[name]
    preprocessing = {**preset.preprocessing, "spacing": [spacing_mm] * 3}
    return replace(
        preset, preprocessing=preprocessing, inference={"window_voxels": [window] * 3, **inference}
    )


@pytest.fixture()
def small_benchmark(monkeypatch):
    """The demo skills at 8 mm with 16³ windows, the paper skill at 6 mm with 32³ windows, a 1-slab CT-ViT;
    the skills are built (not the shipped ones), so the run does not depend on what is installed."""
    monkeypatch.setitem(PRESETS, "demo-seg-petct", shrunk("demo-seg-petct", 8.0, 16, overlap=0.25))
    prognosis = PRESETS["demo-prognosis"]
    monkeypatch.setitem(
        PRESETS,
        "demo-prognosis",
        replace(
            prognosis,
            preprocessing={**prognosis.preprocessing, "spacing": [8.0] * 3},
            inference={"input_voxels": [28, 24, 24]},  # the 192 x 192 x 224 mm box at 8 mm, (T, H, W)
        ),
    )
    monkeypatch.setitem(PRESETS, "hecktor-seg-petct", shrunk("hecktor-seg-petct", 6.0, 32, overlap=0.25))
    monkeypatch.setattr(sections, "CPU_CTVIT_INPUT", (1, 1, 10, 160, 160))
    monkeypatch.setattr(mafm3.bench.fixtures, "bundled_skills", lambda: None)


@pytest.mark.slow
@pytest.mark.precision
def test_the_benchmark_reports_every_section_and_ratio(small_benchmark, tmp_path, capsys, cpu_autocast):
    target = tmp_path / "bench.json"
    code = main(["bench", "--device", "cpu", "--size", "tiny", "--repeats", "1", "--json", str(target)])
    assert code == 0
    report = json.loads(target.read_text())
    assert set(SECTIONS) <= set(report)
    assert report["skills"]["source"] == "built (untrained)" and report["study"]["size"] == "tiny"
    end = report["end_to_end"]
    assert end["cli"]["exit_code"] == 0 and end["cli"]["peak_rss_gb"] > 0
    for run in (end["first_in_process"], end["warm"], *report["e_scaling"].values()):
        assert set(run["stages_s"]) == STAGES and run["end_to_end_s"] > 0 and run["peak_rss_gb"] > 0
    assert list(report["e_scaling"]) == ["tiny"]
    a = report["a_segmentation_vs_unetr"]
    for scope in ("shipped", "paper"):
        assert a[scope]["ours"]["seconds"] > 0 and a[scope]["unetr"]["seconds"] > 0
        assert a[scope]["unetr_parameters"] > a[scope]["ours_parameters"]
    assert a["shipped"]["input_chw"] == [2, 28, 24, 24] and a["paper"]["input_chw"] == [2, 32, 32, 32]
    b = report["b_ctvit_vs_reference"]
    assert b["precision"] == ("fp32" if cpu_autocast is None else str(cpu_autocast).removeprefix("torch."))
    assert b["relative_difference"] <= relative_tolerance(cpu_autocast)  # the reference path runs in float32
    assert report["c_skill_switch"]["switches"] == 2 * sections.SKILL_SWITCHES
    d = report["d_combined_vs_separate"]
    assert d["separate_s"] == pytest.approx(
        d["segmentation_only"]["end_to_end_s"] + d["prognosis_only"]["end_to_end_s"], abs=1e-3
    )
    hot = report["hot_path"]
    assert set(hot["lora_merged_vs_unmerged"]) >= {"merged", "unmerged", "ratio"}
    assert hot["resampling"]["skill"]["ct_max_abs_difference_hu"] < 0.05
    assert set(report["ratios"]) == {"a_shipped", "a_paper", "b", "c", "d"}
    assert all(math.isfinite(value) and value > 0 for value in report["ratios"].values())
    assert all(isinstance(row["met"], bool) for row in report["targets"])
    table = capsys.readouterr().out
    assert "Side by side" in table and "Targets" in table and "skill switch" in table


def test_the_torch_resampler_samples_what_simpleitk_samples():
    ct = phantom_ct()  # oblique, off-origin
    noisy = sitk.GetArrayFromImage(ct) + np.random.default_rng(0).normal(0, 30, (16, 40, 48)).astype(
        np.float32
    )
    image = sitk.GetImageFromArray(noisy)
    image.CopyInformation(ct)
    study = study_from_images(image)
    for spacing in (2.0, 1.5):
        config = PreprocessingConfig.from_dict(
            {**PRESETS["demo-seg-ct"].preprocessing, "spacing": [spacing] * 3}
        )
        grid, _ = model_grid(study, config)
        expected = to_model_array(study.ct, grid, config.axis_order, "linear", -1024.0)
        found = sections.torch_resample(
            study.ct, grid, config.axis_order, -1024.0, torch.device("cpu")
        ).numpy()
        assert found.shape == expected.shape
        inside_both = (expected != -1024.0) & (found != -1024.0)
        assert np.abs(found - expected)[inside_both].max() < 0.01
        assert ((expected != -1024.0) != (found != -1024.0)).mean() < 0.01  # points on the box's edge only


def test_best_of_takes_turns_and_keeps_each_fastest_run():
    calls = []
    records = best_of(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3, torch.device("cpu")
    )
    assert calls == ["a", "b"] * 3
    for record in records.values():
        assert len(record["runs_s"]) == 3 and record["seconds"] == min(record["runs_s"])


def test_the_rss_gauges_see_an_allocation():
    with measured(torch.device("cpu")) as record:
        block = np.ones(300 * 2**20 // 8)  # 300 MiB, touched
        subprocess.run([sys.executable, "-c", "import time; time.sleep(0.1)"], check=True)
        del block
    assert record["peak_rss_gb"] - record["rss_start_gb"] >= 0.25 * 2**30 / GB
    child = run_child(
        [sys.executable, "-c", "b = bytearray(400 * 2**20); b[::4096] = b'x' * len(b[::4096])"], {}
    )
    assert child["exit_code"] == 0 and child["peak_rss_gb"] >= 0.38
