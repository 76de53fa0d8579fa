"""`mafm3 --version` and `mafm3 doctor` report the environment a user actually has."""

import json
import platform

import pytest
import torch

import mafm3
from mafm3.cli import main
from mafm3.engine.device import resolve_device

pytestmark = pytest.mark.precision  # doctor reports what `--precision auto` picks: both CPU paths


def test_version_flag_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"mafm3 {mafm3.__version__}"


def test_doctor_json_matches_the_running_interpreter_and_torch(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MAFM3_HOME", str(tmp_path))
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["python"]["version"] == platform.python_version()
    assert report["torch"]["version"] == torch.__version__
    assert report["torch"]["cuda_available"] == torch.cuda.is_available()
    assert report["torch"]["build"] == ("CUDA" if torch.backends.cuda.is_built() else "CPU")
    assert report["home"] == {"path": str(tmp_path), "from_env": True}
    assert report["libraries"]["monai"] and report["libraries"]["SimpleITK"] and report["libraries"]["peft"]
    assert [skill for skill in report["skills"] if not skill.get("shipped")] == []


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"), [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")]
)
def test_doctor_reports_the_device_that_auto_picks(capsys, tmp_path, monkeypatch, cuda, mps, expected):
    """The order of the README (CUDA, then MPS, then CPU), whatever accelerators this machine has."""
    monkeypatch.setenv("MAFM3_HOME", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["device"] == expected
    assert report["device"] == resolve_device("auto").type  # what a run with --device auto will use


def test_doctor_lists_installed_skill_packs_and_flags_broken_ones(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MAFM3_HOME", str(tmp_path))
    good = tmp_path / "skills" / "seg-ct-1.0.0"
    good.mkdir(parents=True)
    (good / "manifest.json").write_text(
        json.dumps({"id": "seg-ct", "version": "1.0.0", "task": "segmentation", "modalities": ["ct"]})
    )
    broken = tmp_path / "skills" / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")

    assert main(["doctor", "--json"]) == 0
    skills = {s["id"]: s for s in json.loads(capsys.readouterr().out)["skills"]}
    assert skills["seg-ct"]["task"] == "segmentation" and skills["seg-ct"]["modalities"] == ["ct"]
    assert "unreadable manifest" in skills["broken"]["error"]

    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert "seg-ct 1.0.0  segmentation [ct]" in text
    assert f"home         {tmp_path} (MAFM3_HOME)" in text


def test_doctor_hint_when_torch_is_a_cpu_build_but_a_driver_exists(monkeypatch):
    from mafm3 import environment

    monkeypatch.setattr(environment.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    hints = environment.gpu_hints({"installed": True, "build": "CPU", "cuda_available": False})
    assert len(hints) == 1 and "CPU build" in hints[0]
    assert environment.gpu_hints({"installed": True, "build": "CUDA", "cuda_available": True}) == []
