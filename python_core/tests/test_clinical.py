"""The clinical record: vocabularies checked, one sentence per bad field; files in the encodings in use."""

from __future__ import annotations

import codecs
import json

import pytest

from mafm3.clinical import ClinicalRecord
from mafm3.errors import MAFM3Error


@pytest.mark.parametrize(
    ("field", "given", "stored"),
    [
        ("t_stage", "t4A", "T4a"), ("t_stage", "Tis", "Tis"), ("t_stage", "4b", "T4b"),
        ("t_stage", "TX", "Tx"), ("n_stage", "n2c", "N2c"), ("n_stage", "3", "N3"), ("m_stage", "m1", "M1"),
        ("m_stage", "Mx", "Mx"),
        ("sex", "female", "F"), ("sex", " m ", "M"),
    ],
)  # fmt: skip
def test_values_of_the_vocabularies_are_normalised(field, given, stored):
    assert getattr(ClinicalRecord.from_dict({field: given}), field) == stored


@pytest.mark.parametrize(
    ("field", "given"),
    [("t_stage", "T9"), ("t_stage", "T2c"), ("n_stage", "N4"), ("n_stage", "N2d"), ("m_stage", "M2"),
     ("sex", "frog"), ("sex", "Fx"), ("t_stage", "banana")],
)  # fmt: skip
def test_values_outside_the_vocabularies_are_refused(field, given):
    with pytest.raises(MAFM3Error, match=f"Clinical field `{field}` must be .*got '{given}'\\.$"):
        ClinicalRecord.from_dict({field: given})


def test_every_bad_field_gets_its_own_sentence():
    with pytest.raises(MAFM3Error) as refusal:
        ClinicalRecord.from_dict({"sex": "frog", "t_stage": "T9", "age": 50, "n_stage": "N7"})
    message = str(refusal.value)
    assert message.count("Clinical field") == 3 and message.count(". ") == 2 and message.endswith(".")


@pytest.mark.parametrize(
    "encoded",
    [
        lambda text: text.encode("utf-8"),
        lambda text: codecs.BOM_UTF8 + text.encode("utf-8"),
        lambda text: text.encode("utf-16"),  # with its byte-order mark
    ],
    ids=["utf-8", "utf-8 with BOM", "utf-16"],
)
def test_clinical_files_in_utf8_with_or_without_bom_and_utf16_are_read(tmp_path, encoded):
    path = tmp_path / "clinical.json"
    path.write_bytes(encoded(json.dumps({"sex": "F", "t_stage": "T2", "age": 61})))
    assert ClinicalRecord.from_json(path) == ClinicalRecord(sex="F", t_stage="T2", age=61.0)


def test_a_clinical_file_in_another_encoding_is_refused_in_one_sentence(tmp_path):
    path = tmp_path / "clinical.json"
    path.write_bytes('{"sex": "F", "note_de": "Gewebeprobe ü"}'.encode("latin-1"))
    with pytest.raises(
        MAFM3Error, match=r"is not UTF-8 text \(byte 0xfc at position 37\): save it as UTF-8\.$"
    ):
        ClinicalRecord.from_json(path)


@pytest.mark.parametrize(
    ("field", "given", "stored"),
    [
        ("tnm_edition", 7, 7), ("tnm_edition", "8", 8), ("tnm_edition", 8.0, 8), ("tnm_edition", "7th", 7),
        ("tnm_edition", "8th edition", 8),
        ("tnm_group", "IVA", "IVA"), ("tnm_group", "stage ivb", "IVB"), ("tnm_group", "4a", "IVA"),
        ("tnm_group", "3", "III"), ("tnm_group", "II", "II"), ("tnm_group", 4, "IV"), ("tnm_group", "0", "0"),
    ],
)  # fmt: skip
def test_tnm_edition_and_group_are_normalised(field, given, stored):
    assert getattr(ClinicalRecord.from_dict({field: given}), field) == stored


@pytest.mark.parametrize(
    ("field", "given", "expected"),
    [
        ("tnm_edition", 6, "must be 7 or 8 (the TNM edition), got 6."),
        ("tnm_edition", "9th", "must be 7 or 8 (the TNM edition), got '9th'."),
        ("tnm_edition", True, "must be 7 or 8 (the TNM edition), got True."),
        ("tnm_group", "IIIA", "must be a stage group (0, I, II, III, IV, IVA, IVB, IVC), got 'IIIA'."),
        ("tnm_group", "V", "must be a stage group (0, I, II, III, IV, IVA, IVB, IVC), got 'V'."),
        ("tnm_group", "IVD", "must be a stage group (0, I, II, III, IV, IVA, IVB, IVC), got 'IVD'."),
        ("report", 12, "must be text, got int."),
    ],
)
def test_bad_tnm_fields_and_reports_are_refused_in_one_sentence(field, given, expected):
    with pytest.raises(MAFM3Error) as refusal:
        ClinicalRecord.from_dict({field: given})
    assert str(refusal.value) == f"Clinical field `{field}` {expected}"


def test_a_report_comes_from_the_json_or_a_text_file(tmp_path):
    path = tmp_path / "clinical.json"
    path.write_text(json.dumps({"age": 61, "report": "  Patient Information: 61-year-old male.  "}))
    record = ClinicalRecord.from_json(path)
    assert record.report == "Patient Information: 61-year-old male."
    report = tmp_path / "report.txt"
    report.write_bytes("Bericht: Tumor im Oropharynx.\n".encode("utf-16"))
    assert record.with_report(report).report == "Bericht: Tumor im Oropharynx."
    assert record.with_report(report).age == 61.0
    (tmp_path / "empty.txt").write_text(" \n")
    with pytest.raises(MAFM3Error, match=r"report file .*empty.txt is empty: write the patient's report"):
        record.with_report(tmp_path / "empty.txt")
    with pytest.raises(MAFM3Error, match=r"Cannot read the report file .*missing.txt \(.*\): check the path"):
        record.with_report(tmp_path / "missing.txt")
