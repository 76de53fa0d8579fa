"""MAFM3SlicerLib.skills: which skills the panel lists, for which inputs, and which selections it refuses."""

import json

import pytest
from skill_packs import write_pack

from MAFM3SlicerLib.errors import PanelError
from MAFM3SlicerLib.skills import (
    SkillInfo,
    active_skills,
    available_skills,
    check_selection,
    format_skill_ids,
    pack_path,
    parse_skill_ids,
    runnable_skills,
    selected_skills,
    skill_versions,
    skills_from_manifests,
    version_order,
)


@pytest.fixture
def packs(skills_home):
    skills = skills_home / "skills"
    write_pack(skills, "seg-petct", "segmentation", ("CT", "PET"))
    write_pack(skills, "seg-ct", "segmentation", ("CT",), version="2.0.0")
    write_pack(skills, "seg-ct", "segmentation", ("CT",), version="1.0.0")
    write_pack(skills, "rfs", "prognosis", ("CT",), demo=True)
    broken = skills / "broken-1.0.0"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    return skills


def ids(skills):
    return [(skill.id, skill.version) for skill in skills]


def test_the_panel_lists_readable_packs_by_task_then_id_and_version(packs):
    skills = available_skills()
    assert ids(skills) == [("seg-ct", "1.0.0"), ("seg-ct", "2.0.0"), ("seg-petct", "1.0.0"), ("rfs", "1.0.0")]
    rfs = skills[-1]
    assert (rfs.task, rfs.modalities, rfs.demo, rfs.bundled) == ("prognosis", ("CT",), True, False)
    assert rfs.label == "rfs 1.0.0  [demo]"
    assert "Demo skill: synthetic data, not for clinical use." in rfs.details


def test_only_skills_whose_inputs_are_selected_are_offered_each_in_the_version_the_worker_runs(packs):
    write_pack(packs, "seg-ct", "segmentation", ("CT",), version="10.0.0")
    skills = available_skills()
    assert ids(runnable_skills(skills, has_pet=False)) == [("seg-ct", "10.0.0"), ("rfs", "1.0.0")]
    assert ids(runnable_skills(skills, has_pet=True)) == [
        ("seg-ct", "10.0.0"),
        ("seg-petct", "1.0.0"),
        ("rfs", "1.0.0"),
    ]


def test_a_version_chosen_with_skill_use_is_the_one_offered_and_the_others_stay_listed(packs):
    from mafm3.skills.registry import installed_and_shipped_skills
    from mafm3.skills.store import use_version

    use_version("seg-ct", "1.0.0")  # back from 2.0.0, as `mafm3 skill use seg-ct@1.0.0` does

    skills = available_skills()
    assert ids(runnable_skills(skills, has_pet=False)) == [("seg-ct", "1.0.0"), ("rfs", "1.0.0")]
    assert [(s.version, s.active) for s in skill_versions(skills, "seg-ct")] == [
        ("1.0.0", True),
        ("2.0.0", False),
    ]
    # The worker's `list_skills` answer: each manifest with its folder and `active` (mafm3.worker).
    listed = [
        {**skill.manifest.to_dict(), "path": str(skill.folder), "active": skill.active}
        for skill in installed_and_shipped_skills()
    ]
    assert ids(active_skills(skills_from_manifests(listed))) == ids(active_skills(skills))


def test_versions_are_ordered_as_the_registry_orders_them():
    from mafm3.skills.registry import version_key

    versions = ["1.10.0", "1.9.2", "2.0.0-rc1", "2.0.0", "1.0", "10.0.0", "1.0.0+local"]
    assert sorted(versions, key=version_order) == sorted(versions, key=version_key)


def test_the_workers_manifest_list_gives_the_same_skills_without_broken_packs(packs):
    from mafm3.skills.store import installed_manifests  # what the worker's `list_skills` sends

    assert ids(skills_from_manifests(installed_manifests())) == ids(available_skills())


def test_a_selection_needs_one_skill_and_at_most_one_per_task():
    segmentation = SkillInfo("seg-ct", "1", "segmentation", ("CT",), "", False, None)
    other = SkillInfo("seg-petct", "1", "segmentation", ("CT", "PET"), "", False, None)
    prognosis = SkillInfo("rfs", "1", "prognosis", ("CT",), "", False, None)
    check_selection([segmentation, prognosis])
    with pytest.raises(PanelError, match="Select a skill"):
        check_selection([])
    with pytest.raises(PanelError, match="seg-ct and seg-petct both do segmentation"):
        check_selection([segmentation, prognosis, other])


def test_skill_ids_round_trip_through_the_parameter_text_and_unknown_ids_drop_out(packs):
    text = format_skill_ids(["rfs", "seg-petct", "rfs", "uninstalled"])
    assert text == "rfs,seg-petct,uninstalled" and parse_skill_ids(text + ", ") == [
        "rfs",
        "seg-petct",
        "uninstalled",
    ]
    runnable = runnable_skills(available_skills(), has_pet=False)
    assert ids(selected_skills(runnable, parse_skill_ids(text))) == [("rfs", "1.0.0")]  # PET/CT: no PET


def test_a_pack_is_chosen_as_its_zip_or_as_the_manifest_in_its_folder(tmp_path):
    assert pack_path(tmp_path / "seg.zip") == tmp_path / "seg.zip"
    assert pack_path(tmp_path / "seg-ct-1.0.0" / "manifest.json") == tmp_path / "seg-ct-1.0.0"


def test_an_installed_pack_hides_the_shipped_one_with_the_same_id_and_version(packs, monkeypatch, tmp_path):
    import mafm3.config

    shipped = tmp_path / "shipped"
    write_pack(shipped, "rfs", "prognosis", ("CT",), demo=True)
    write_pack(shipped, "demo-seg-ct", "segmentation", ("CT",), demo=True)
    monkeypatch.setattr(mafm3.config, "bundled_skills_dir", lambda: shipped)

    by_key = {(skill.id, skill.version): skill for skill in available_skills()}

    assert by_key[("demo-seg-ct", "1.0.0")].bundled is True
    assert by_key[("rfs", "1.0.0")].bundled is False
    assert json.loads((packs / "rfs-1.0.0" / "manifest.json").read_text())["id"] == "rfs"
