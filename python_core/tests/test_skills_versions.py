"""Versions side by side: which one is active, `mafm3 skill use ID@VERSION` to switch and to go back, and the
engine and `resolve_pack` taking the active one. Oracle: the versions written into the manifests here."""

from __future__ import annotations

import json
import shutil

import pytest

from mafm3.cli import main
from mafm3.config import skills_dir
from mafm3.engine import Engine, RunRequest
from mafm3.skills.packs import resolve_pack

SKILL = "tiny-seg-ct"


@pytest.fixture
def two_versions(installed_skills):
    """tiny-seg-ct installed as 1.0.0 and, beside it, as 1.1.0 (same weights, another version)."""
    first = skills_dir() / f"{SKILL}-1.0.0"
    second = skills_dir() / f"{SKILL}-1.1.0"
    shutil.copytree(first, second)
    manifest = json.loads((second / "manifest.json").read_text())
    (second / "manifest.json").write_text(json.dumps({**manifest, "version": "1.1.0"}))
    return first, second


def listed(capsys) -> dict[str, bool]:
    capsys.readouterr()
    assert main(["skill", "list", "--json"]) == 0
    return {m["version"]: m["active"] for m in json.loads(capsys.readouterr().out) if m["id"] == SKILL}


def engine_choice(request_skill: str = SKILL) -> str:
    request = RunRequest(ct="unused", skills=[request_skill], device="cpu")
    return Engine("cpu").choose(request, {"CT"})[0].manifest.version


def test_the_highest_version_is_active_until_another_is_chosen(two_versions, capsys):
    assert listed(capsys) == {"1.0.0": False, "1.1.0": True}
    assert engine_choice() == "1.1.0"
    assert resolve_pack(SKILL) == two_versions[1]


def test_skill_use_switches_the_active_version_and_back(two_versions, capsys):
    assert main(["skill", "use", f"{SKILL}@1.0.0"]) == 0
    said = capsys.readouterr().out
    assert "now runs version 1.0.0 (was 1.1.0)" in said and f"skill use {SKILL}@1.1.0" in said
    assert listed(capsys) == {"1.0.0": True, "1.1.0": False}
    assert engine_choice() == "1.0.0" and resolve_pack(SKILL) == two_versions[0]
    assert engine_choice(f"{SKILL}@1.1.0") == "1.1.0"  # a named version runs whatever is active

    assert main(["skill", "use", f"{SKILL}@1.1.0"]) == 0
    assert listed(capsys) == {"1.0.0": False, "1.1.0": True}
    assert engine_choice() == "1.1.0" and resolve_pack(f"{SKILL}@1.0.0") == two_versions[0]


@pytest.mark.parametrize(
    ("reference", "words"), [(f"{SKILL}@2.0.0", "versions here: 1.0.0, 1.1.0"), (SKILL, "Name the version")]
)
def test_skill_use_of_a_missing_or_unnamed_version_is_refused_in_one_sentence(
    two_versions, capsys, reference, words
):
    assert main(["skill", "use", reference]) == 1
    error = capsys.readouterr().err
    assert words in error and error.count("\n") == 1
    assert listed(capsys) == {"1.0.0": False, "1.1.0": True}


def test_removing_the_chosen_version_forgets_the_choice(two_versions, capsys):
    assert main(["skill", "use", f"{SKILL}@1.0.0"]) == 0
    assert main(["skill", "remove", SKILL, "--version", "1.0.0"]) == 0
    assert listed(capsys) == {"1.1.0": True}
    shutil.copytree(two_versions[1], two_versions[0])  # installed again (as another 1.0.0)
    manifest = json.loads((two_versions[0] / "manifest.json").read_text())
    (two_versions[0] / "manifest.json").write_text(json.dumps({**manifest, "version": "1.0.0"}))
    assert listed(capsys) == {"1.0.0": False, "1.1.0": True}
