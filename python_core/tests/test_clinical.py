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
