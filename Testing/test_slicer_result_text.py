"""MAFM3SlicerLib.result_text: what the panel writes under Results for a finished run."""

from MAFM3SlicerLib.result_text import result_lines

RECORD = {"device": "cpu", "timings_s": {"total": 4.25}}


def test_each_warning_of_the_run_is_shown_as_its_own_line_after_the_demo_disclaimer():
    record = {
        **RECORD,
        "demo": True,
        "disclaimer": "demo - synthetic data, not for clinical use",
        "warnings": ["The PET covers only part of the CT.", "The CT slices are 5 mm thick."],
    }
    assert result_lines(record) == [
        "demo - synthetic data, not for clinical use",
        "Warning: The PET covers only part of the CT.",
        "Warning: The CT slices are 5 mm thick.",
        "Ran on cpu in 4.2 s.",
    ]


def test_a_record_without_warnings_shows_none():
    assert result_lines(RECORD) == result_lines({**RECORD, "warnings": []}) == ["Ran on cpu in 4.2 s."]


def test_zero_shot_classes_are_listed_most_likely_first():
    record = {**RECORD, "classification": {"probabilities": {"Emphysema": 0.2, "Lung nodule": 0.7}}}
    assert result_lines(record)[:3] == ["Zero-shot classification:", "  Lung nodule: 70%", "  Emphysema: 20%"]
