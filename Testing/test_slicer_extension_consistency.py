"""The classic extension mistakes are absent from the tree, and each check catches them in a broken copy."""

import re
import shutil
import struct
from pathlib import Path

import pytest
import tomllib
from extension_checks import (
    extension_metadata,
    extension_metadata_problems,
    extensions_index_problems,
    import_problems,
    module_file_problems,
    parameter_binding_problems,
    parameter_default_problems,
    scene_connection_problems,
    subdirectory_problems,
    ui_name_problems,
    unittest_registration_problems,
    wait_cursor_dialog_problems,
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


def test_missing_metadata_is_reported(tmp_path):
    text = (REPOSITORY_DIR / "CMakeLists.txt").read_text()
    (tmp_path / "CMakeLists.txt").write_text(text.replace('set(EXTENSION_CATEGORY "Segmentation")', ""))
    assert extension_metadata_problems(tmp_path) == ["EXTENSION_CATEGORY is not set."]


# --- the Extensions Index's rules ---------------------------------------------------------------------------

CORE_LICENSE = tomllib.loads((REPOSITORY_DIR / "python_core" / "pyproject.toml").read_text())["project"][
    "license"
]["text"]


@pytest.fixture
def extension_copy(tmp_path) -> Path:
    """What the Index checks of the repository: top-level CMakeLists.txt, licence, icon and screenshots."""
    copy = tmp_path / "repository"
    for relative in ("CMakeLists.txt", "LICENSE.txt", "Resources", "MAFM3Slicer/Resources/Icons"):
        source = REPOSITORY_DIR / relative
        target = copy / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy)(source, target)
    return copy


def _edit_cmake(root: Path, old: str, new: str) -> None:
    cmake = root / "CMakeLists.txt"
    text = cmake.read_text()
    assert old in text
    cmake.write_text(text.replace(old, new))


def test_the_extension_passes_the_extensions_index_rules():
    assert extensions_index_problems(REPOSITORY_DIR, CORE_LICENSE) == []


def test_the_licence_at_the_root_is_the_cores_licence():
    assert CORE_LICENSE == "Apache-2.0"
    assert (
        "Apache License\n                           Version 2.0, January 2004"
        in (REPOSITORY_DIR / "LICENSE.txt").read_text()
    )


def test_the_module_help_links_its_documentation_at_the_extensions_homepage_and_names_the_minimum_slicer(
    mafm3_slicer,
):
    import types

    parent = types.SimpleNamespace()
    mafm3_slicer.MAFM3Slicer(parent)
    homepage = "".join(extension_metadata(REPOSITORY_DIR / "CMakeLists.txt")["EXTENSION_HOMEPAGE"])
    assert f'<a href="{homepage}#readme">' in parent.helpText
    description = "".join(extension_metadata(REPOSITORY_DIR / "CMakeLists.txt")["EXTENSION_DESCRIPTION"])
    minimum = f"3D Slicer {mafm3_slicer.MINIMUM_SLICER} or later"
    assert minimum in parent.helpText and minimum in description


def test_a_url_through_a_cmake_variable_is_refused_because_the_index_does_not_expand_it(extension_copy):
    _edit_cmake(
        extension_copy,
        'set(EXTENSION_ICONURL "https://raw.githubusercontent.com/MAFM3Slicer/SlicerMAFM3/main/',
        'set(EXTENSION_ICONURL "${EXTENSION_HOMEPAGE}/raw/main/',
    )
    (problem,) = extensions_index_problems(extension_copy, CORE_LICENSE)
    assert problem.startswith("EXTENSION_ICONURL uses a CMake variable")


def test_a_screenshot_that_is_not_in_the_repository_or_not_an_image_is_refused(extension_copy):
    screenshots = sorted((extension_copy / "Resources" / "Screenshots").glob("*.png"))
    screenshots[0].unlink()
    screenshots[1].write_text("a mock-up described in words")

    problems = extensions_index_problems(extension_copy, CORE_LICENSE)

    assert sorted(re.sub(r" https://\S+", "", p) for p in problems) == [
        f"EXTENSION_SCREENSHOTURLS names Resources/Screenshots/{screenshots[0].name}, which is not in the "
        "repository.",
        f"EXTENSION_SCREENSHOTURLS names Resources/Screenshots/{screenshots[1].name}, which is not a PNG, "
        "JPEG or GIF image.",
    ]


def test_names_against_the_index_rules_and_an_unknown_category_are_refused(extension_copy):
    _edit_cmake(extension_copy, "project(MAFM3Slicer)", "project(SlicerMAFM3)")
    _edit_cmake(
        extension_copy,
        '"https://github.com/MAFM3Slicer/SlicerMAFM3"',
        '"https://github.com/MAFM3Slicer/MAFM3"',
    )
    _edit_cmake(extension_copy, 'set(EXTENSION_CATEGORY "Segmentation")', 'set(EXTENSION_CATEGORY "AI")')

    problems = extensions_index_problems(extension_copy, CORE_LICENSE)

    assert problems[:3] == [
        "The extension name SlicerMAFM3 starts with 'Slicer'; the Index asks for it without.",
        "The repository name MAFM3 does not start with 'Slicer', as the Index asks (e.g. SlicerSlicerMAFM3).",
        "EXTENSION_CATEGORY 'AI' is not a category the Index accepts.",
    ]
    assert all("points into another repository" in p for p in problems[3:]) and len(problems) == 6


def test_a_missing_or_different_licence_is_refused(extension_copy):
    (extension_copy / "LICENSE.txt").write_text("MIT License\n\nCopyright (c) MAFM3Slicer contributors\n")
    assert extensions_index_problems(extension_copy, CORE_LICENSE) == [
        "LICENSE.txt is not the Apache-2.0 licence the core declares."
    ]
    (extension_copy / "LICENSE.txt").unlink()
    assert extensions_index_problems(extension_copy, CORE_LICENSE) == [
        "No licence file (LICENSE.txt) in the repository root."
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


def test_no_confirmation_is_asked_under_a_wait_cursor():
    assert wait_cursor_dialog_problems(MODULE_FILE) == []


def test_a_confirmation_inside_a_wait_cursor_block_is_reported(tmp_path):
    module_file = tmp_path / "MAFM3Slicer.py"
    text = MODULE_FILE.read_text()
    asks_first = """        with slicer.util.tryWithErrorDisplay(_("Could not install the dependencies.")):"""
    assert asks_first in text
    module_file.write_text(
        text.replace(
            asks_first, asks_first.replace('dependencies."))', 'dependencies."), waitCursor=True)'), 1
        )
    )

    asked_install, asked_restart = wait_cursor_dialog_problems(module_file)

    assert asked_install.startswith("MAFM3SlicerWidget.onApplyButton (line ")
    assert asked_install.endswith(
        "opens confirmOkCancelDisplay under a wait cursor; ask before the waitCursor block."
    )
    # _ensureDependencies -> onPollInstall -> the restart question: found too, two calls deep
    assert "opens confirmYesNoDisplay under a wait cursor" in asked_restart


def test_a_confirmation_several_calls_deep_under_a_wait_cursor_is_reported(tmp_path):
    """Polling the worker may ask whether to switch to an improved skill version (onPollWorker ->
    _askToSwitch -> confirmYesNoDisplay): polling inside the Improve button's wait cursor would ask there."""
    module_file = tmp_path / "MAFM3Slicer.py"
    text = MODULE_FILE.read_text()
    polls_after = """            self._pollTimer.start()
        self.onPollWorker()

    def onUseVersion(self) -> None:"""
    assert polls_after in text
    module_file.write_text(
        text.replace(
            polls_after, polls_after.replace("        self.onPollWorker()", "            self.onPollWorker()")
        )
    )

    (problem,) = wait_cursor_dialog_problems(module_file)

    assert problem.startswith("MAFM3SlicerWidget.onImproveButton (line ")
    assert "opens confirmYesNoDisplay under a wait cursor" in problem
