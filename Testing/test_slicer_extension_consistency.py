"""The classic extension mistakes are absent from the tree, and each check catches them in a broken copy."""

import shutil
import struct
from pathlib import Path

import pytest
from extension_checks import (
    extension_metadata,
    extension_metadata_problems,
    import_problems,
    module_file_problems,
    parameter_binding_problems,
    parameter_default_problems,
    scene_connection_problems,
    subdirectory_problems,
    ui_name_problems,
    unittest_registration_problems,
)

REPOSITORY_DIR = Path(__file__).resolve().parent.parent
MODULE_DIR = REPOSITORY_DIR / "MAFM3Slicer"
MODULE_FILE = MODULE_DIR / "MAFM3Slicer.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "MAFM3Slicer.ui"
IN_SLICER_TESTS_DIR = REPOSITORY_DIR / "Testing" / "Python"


@pytest.fixture
def module_copy(tmp_path) -> Path:
    """A throw-away copy of the module folder to break."""
    return Path(
        shutil.copytree(MODULE_DIR, tmp_path / "MAFM3Slicer", ignore=shutil.ignore_patterns("__pycache__"))
    )


# --- the tree as it is --------------------------------------------------------------------------------------


def test_every_module_file_is_listed_in_cmake_and_every_listed_file_exists():
    assert module_file_problems(MODULE_DIR) == []


def test_every_in_slicer_test_script_is_registered_with_ctest():
    assert unittest_registration_problems(IN_SLICER_TESTS_DIR) == []


def test_every_cmake_subdirectory_exists():
    assert subdirectory_problems(REPOSITORY_DIR) == []


def test_the_extension_metadata_is_complete_and_depends_on_pytorch():
    assert extension_metadata_problems(REPOSITORY_DIR) == []
    assert "PyTorch" in extension_metadata(REPOSITORY_DIR / "CMakeLists.txt")["EXTENSION_DEPENDS"]


def test_every_ui_name_the_module_uses_exists_in_the_ui_file():
    assert ui_name_problems(MODULE_FILE, UI_FILE) == []


def test_every_mrml_widget_receives_the_scene():
    assert scene_connection_problems(UI_FILE) == []


def test_every_slicer_parameter_name_binds_a_parameter_node_field_with_a_fitting_widget(mafm3_slicer):
    assert parameter_binding_problems(UI_FILE, mafm3_slicer.MAFM3SlicerParameterNode) == []


def test_every_parameter_default_is_within_its_choices_and_range(mafm3_slicer):
    assert parameter_default_problems(mafm3_slicer.MAFM3SlicerParameterNode) == []


def test_the_module_imports_no_model_stack_and_qt_only_inside_the_widget():
    assert import_problems(MODULE_DIR, "MAFM3Slicer") == []


def test_the_module_icon_is_a_128_pixel_square_png():
    header = (MODULE_DIR / "Resources" / "Icons" / "MAFM3Slicer.png").read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", header[16:24]) == (128, 128)  # IHDR width, height


# --- the checks catch the mistakes --------------------------------------------------------------------------


def test_a_deleted_listed_file_and_an_unlisted_new_file_are_both_reported(module_copy):
    (module_copy / "MAFM3SlicerLib" / "geometry.py").unlink()
    (module_copy / "MAFM3SlicerLib" / "segments.py").write_text('"""Results -> segmentation nodes."""\n')

    problems = module_file_problems(module_copy)

    assert len(problems) == 2
    assert problems[0].startswith("MAFM3SlicerLib/geometry.py is listed in")
    assert problems[0].endswith("but does not exist.")
    assert problems[1].startswith("MAFM3SlicerLib/segments.py is not listed in")
    assert problems[1].endswith("so Slicer would not install it.")


def test_an_unregistered_in_slicer_test_script_is_reported(tmp_path):
    tests_dir = Path(shutil.copytree(IN_SLICER_TESTS_DIR, tmp_path / "Python"))
    (tests_dir / "MAFM3SlicerSegmentsTest.py").write_text("import unittest\n")
    (problem,) = unittest_registration_problems(tests_dir)
    assert problem.startswith("MAFM3SlicerSegmentsTest.py is not listed in")


def test_a_subdirectory_without_cmakelists_is_reported(tmp_path):
    (tmp_path / "CMakeLists.txt").write_text("add_subdirectory(MAFM3Slicer)\n")
    (tmp_path / "MAFM3Slicer").mkdir()
    (problem,) = subdirectory_problems(tmp_path)
    assert problem.endswith("adds MAFM3Slicer, which has no CMakeLists.txt.")


def test_missing_metadata_and_an_icon_url_into_nowhere_are_reported(tmp_path):
    text = (REPOSITORY_DIR / "CMakeLists.txt").read_text()
    (tmp_path / "CMakeLists.txt").write_text(text.replace('set(EXTENSION_CATEGORY "Segmentation")', ""))
    problems = extension_metadata_problems(tmp_path)  # a copy without the module folder: the icon is missing
    assert problems == [
        "EXTENSION_CATEGORY is not set.",
        "EXTENSION_ICONURL points at MAFM3Slicer/Resources/Icons/MAFM3Slicer.png, "
        "which is not in the repository.",
    ]


def test_a_ui_name_missing_from_the_ui_file_is_reported(tmp_path):
    module_file = tmp_path / "MAFM3Slicer.py"
    module_file.write_text(MODULE_FILE.read_text() + "\n# self.ui.cancelButton.enabled = True\n")
    assert ui_name_problems(module_file, UI_FILE) == [
        "MAFM3Slicer.py uses self.ui.cancelButton, which MAFM3Slicer.ui lacks."
    ]


def test_a_node_selector_without_the_scene_connection_is_reported(tmp_path):
    ui_file = tmp_path / "MAFM3Slicer.ui"
    text = UI_FILE.read_text()
    receiver = "<receiver>inputPETSelector</receiver>"
    assert text.count(receiver) == 1
    ui_file.write_text(text.replace(receiver, "<receiver>inputCTSelector</receiver>"))
    assert scene_connection_problems(ui_file) == [
        "inputPETSelector is not connected to MAFM3Slicer's mrmlSceneChanged(vtkMRMLScene*)."
    ]


def test_a_misspelt_parameter_name_and_a_widget_of_the_wrong_kind_are_reported(mafm3_slicer, tmp_path):
    ui_file = tmp_path / "MAFM3Slicer.ui"
    text = UI_FILE.read_text()
    assert "<string>inputPET</string>" in text and 'class="QDoubleSpinBox" name="overlapSpinBox"' in text
    text = text.replace("<string>inputPET</string>", "<string>inputPet</string>")
    ui_file.write_text(
        text.replace('class="QDoubleSpinBox" name="overlapSpinBox"', 'class="QSpinBox" name="overlapSpinBox"')
    )

    problems = parameter_binding_problems(ui_file, mafm3_slicer.MAFM3SlicerParameterNode)

    assert len(problems) == 2
    assert (
        problems[0] == "inputPETSelector binds 'inputPet', which is not a field of MAFM3SlicerParameterNode."
    )
    assert problems[1].startswith("overlapSpinBox is a QSpinBox, which cannot be bound to 'overlap'")


def test_combo_box_items_that_differ_from_the_choices_are_reported(mafm3_slicer, tmp_path):
    ui_file = tmp_path / "MAFM3Slicer.ui"
    ui_file.write_text(UI_FILE.read_text().replace("<string>cuda</string>", "<string>gpu</string>"))
    (problem,) = parameter_binding_problems(ui_file, mafm3_slicer.MAFM3SlicerParameterNode)
    assert (
        problem == "deviceComboBox offers ['auto', 'gpu', 'cpu'] but 'device' allows ['auto', 'cuda', 'cpu']."
    )


def test_a_default_outside_its_choices_is_reported():
    from typing import Annotated

    from slicer_standins import Choice, WithinRange, parameterNodeWrapper

    @parameterNodeWrapper
    class BrokenParameterNode:
        device: Annotated[str, Choice(["auto", "cpu"])] = "gpu"
        overlap: Annotated[float, WithinRange(0.0, 0.75)] = 0.9

    assert parameter_default_problems(BrokenParameterNode) == [
        "The default of 'device', 'gpu', is not one of ['auto', 'cpu'].",
        "The default of 'overlap', 0.9, is outside [0.0, 0.75].",
    ]


def test_torch_anywhere_and_qt_in_the_lib_or_at_module_level_are_reported(module_copy):
    (module_copy / "MAFM3SlicerLib" / "worker.py").write_text("import qt\n\n\ndef run():\n    import torch\n")
    module_file = module_copy / "MAFM3Slicer.py"
    module_file.write_text("import ctk\n\n\ndef setup():\n    import qt\n" + module_file.read_text())

    assert import_problems(module_copy, "MAFM3Slicer") == [
        "MAFM3Slicer.py:1 imports ctk at module level; import it in the Widget.",
        "MAFM3SlicerLib/worker.py:1 imports qt; MAFM3SlicerLib must stay Qt-free.",
        "MAFM3SlicerLib/worker.py:5 imports torch; the GUI process must not load the model.",
    ]
