"""Class lists in every format and name matching across naming styles."""

import json

import pytest

from stzsar.classes import ClassIndex, ClassListError, canonical_name, read_class_list


@pytest.mark.parametrize("raw, expected", [
    ("ApplyEyeMakeup", "apply eye makeup"), ("apply_eye_makeup", "apply eye makeup"),
    ("apply eye makeup", "apply eye makeup"), ("YoYo", "yo yo"), ("PlayingDaf", "playing daf"),
    ("BlowDryHair", "blow dry hair"), ("passing American football (in game)", "passing american football in game"),
])
def test_canonical_name(raw, expected):
    assert canonical_name(raw) == expected


def test_formats(tmp_path):
    (tmp_path / "a.txt").write_text("ApplyEyeMakeup\nArchery\n")
    (tmp_path / "b.csv").write_text("id,name\n1,Archery\n0,ApplyEyeMakeup\n")
    (tmp_path / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n")
    (tmp_path / "c.json").write_text(json.dumps(["ApplyEyeMakeup", "Archery"]))
    for name in ("a.txt", "b.csv", "classInd.txt", "c.json"):
        assert read_class_list(tmp_path / name) == ["ApplyEyeMakeup", "Archery"], name


def test_errors_name_file_and_line(tmp_path):
    (tmp_path / "bad.csv").write_text("id,name\n0,a\nx,b\n")
    with pytest.raises(ClassListError, match=r"bad.csv:3"):
        read_class_list(tmp_path / "bad.csv")
    (tmp_path / "dup.txt").write_text("Archery\narchery\n")
    with pytest.raises(ClassListError, match="more than once"):
        read_class_list(tmp_path / "dup.txt")
    with pytest.raises(FileNotFoundError):
        read_class_list(tmp_path / "none.txt")


def test_class_index_matches_styles_and_names_unknown():
    index = ClassIndex(["ApplyEyeMakeup", "HandstandPushups"])
    assert index.index("apply_eye_makeup") == 0
    assert index.index("hand stand pushups") == 1
    with pytest.raises(KeyError, match="unknown class name 'salsa'"):
        index.index("salsa")


def test_real_lists(shared_data):
    assert len(read_class_list(shared_data / "lists/ucf101/ucf_labels.csv")) == 101
    assert len(read_class_list(shared_data / "lists/hmdb51/hmdb51_labels.csv")) == 51
    assert len(read_class_list(shared_data / "lists/k400/kinetics_400_labels.csv")) == 400
