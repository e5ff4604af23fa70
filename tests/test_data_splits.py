"""Split readers on the real lists in ../shared/data/lists and on official-format files written from them."""

import json
import random
from pathlib import Path

import pytest

from stzsar.classes import canonical_name, read_class_list
from stzsar.data.errors import SplitFormatError
from stzsar.data.protocols import (
    draw_zero_shot_classes,
    few_shot,
    k600_new_classes,
    k600_zero_shot,
    load_zero_shot_classes,
    match_classes,
)
from stzsar.data.splits import VideoSplit, build_split, read_hmdb51, read_kinetics_csv, read_list, read_ucf101

ROOT = Path("/videos")  # never touched: parsing needs no videos


# -- the real BIKE / Text4Vis lists ---------------------------------------------------------------------
def test_ucf101_test_split_1(shared_data):
    lists = shared_data / "lists" / "ucf101"
    split = build_split("bike", lists / "val_rgb_split_1.txt", ROOT, labels=lists / "ucf_labels.csv")
    assert len(split) == 3783 and len(split.classes) == 101
    assert all(n > 0 for n in split.counts())
    # Independent check of the labels: the folder of each video is its class.
    for path, label in split.videos:
        assert canonical_name(path.parent.name) == canonical_name(split.classes[label])
    assert split.videos[0] == (ROOT / "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01", 0)


@pytest.mark.parametrize("number", [1, 2, 3])
def test_hmdb51_test_splits(shared_data, number):
    lists = shared_data / "lists" / "hmdb51"
    split = read_list(lists / f"val_rgb_split_{number}.txt", lists / "hmdb51_labels.csv", ROOT)
    assert len(split) == 1530 and len(split.classes) == 51
    assert split.counts() == [30] * 51  # 30 test videos per class in each official split
    for path, label in split.videos:
        assert canonical_name(path.parent.name) == canonical_name(split.classes[label])


def test_k600_zero_shot_split_1(shared_data):
    lists = shared_data / "lists" / "k600"
    classes = load_zero_shot_classes(1, class_list=lists / "k160_labels_split1.csv")
    split = k600_zero_shot(1, ROOT, classes, list_file=lists / "test_split1_exist.txt")
    assert len(split) == 14119 and len(split.classes) == 160
    assert split.meta["protocol"] == "k600-zero-shot" and split.name == "k600-zero-shot-1"
    assert all(n > 0 for n in split.counts())


# -- official formats, written from the real lists ---------------------------------------------------------
def test_ucf101_official_files_give_the_same_split(shared_data, tmp_path):
    lists = shared_data / "lists" / "ucf101"
    classes = read_class_list(lists / "ucf_labels.csv")
    bike_test = read_list(lists / "val_rgb_split_1.txt", classes, ROOT)
    bike_train = read_list(lists / "train_rgb_split_1.txt", classes, ROOT)
    (tmp_path / "classInd.txt").write_text("".join(f"{i + 1} {name}\n" for i, name in enumerate(classes)))
    rel = lambda path: path.relative_to(ROOT).as_posix() + ".avi"  # noqa: E731
    (tmp_path / "testlist01.txt").write_text("".join(f"{rel(p)}\r\n" for p, _ in bike_test.videos))
    (tmp_path / "trainlist01.txt").write_text("".join(f"{rel(p)} {l + 1}\n" for p, l in bike_train.videos))

    test = read_ucf101(tmp_path, ROOT, split=1, subset="test")
    train = build_split("ucf101", tmp_path, ROOT, split=1, subset="train")
    assert test.classes == classes and len(test) == 3783
    assert [(p.with_suffix(""), l) for p, l in test.videos] == bike_test.videos
    assert [(p.with_suffix(""), l) for p, l in train.videos] == bike_train.videos
    assert len(train) == 9537
    # A list file given directly finds classInd.txt beside it.
    assert read_ucf101(tmp_path / "testlist01.txt", ROOT).videos == test.videos


def test_hmdb51_official_files_give_the_same_split(shared_data, tmp_path):
    lists = shared_data / "lists" / "hmdb51"
    bike = read_list(lists / "val_rgb_split_1.txt", lists / "hmdb51_labels.csv", ROOT)
    per_class = {}
    for path, _ in bike.videos:
        per_class.setdefault(path.parent.name, []).append(f"{path.name}.avi 2")
    for folder, lines in per_class.items():
        # Also train (1) and unused (0) lines, which the test subset must leave out.
        extra = [f"{folder}_train_{i}.avi 1" for i in range(3)] + [f"{folder}_unused.avi 0"]
        (tmp_path / f"{folder}_test_split1.txt").write_text("\n".join(extra[:2] + lines + extra[2:]) + "\n")
        (tmp_path / f"{folder}_test_split2.txt").write_text(f"{folder}_other.avi 2\n")
    test = read_hmdb51(tmp_path, ROOT, split=1, subset="test", labels=lists / "hmdb51_labels.csv")
    assert len(test) == 1530 and len(test.classes) == 51
    assert [(p.with_suffix(""), l) for p, l in test.videos] == sorted(bike.videos, key=lambda v: (v.label, str(v.path)))
    # Without a class list the classes are the file names, sorted: the same order here.
    default = read_hmdb51(tmp_path, ROOT, split=1)
    assert [canonical_name(c) for c in default.classes] == [canonical_name(c) for c in test.classes]
    train = build_split("hmdb51", tmp_path, ROOT, split=1, subset="train")
    assert len(train) == 51 * 3 and train.counts() == [3] * 51
    assert len(read_hmdb51(tmp_path, ROOT, split=2)) == 51


def write_kinetics_csv(path, rows, header="label,youtube_id,time_start,time_end,split,is_cc"):
    path.write_text(header + "\n" + "".join(",".join(map(str, row)) + "\n" for row in rows))


def test_kinetics_csv(tmp_path):
    csv_file = tmp_path / "validate.csv"
    write_kinetics_csv(csv_file, [
        ("air drumming", "abc", 10, 20, "val", 0),
        ('"applauding"', "-x_y", 0, 10, "val", 0),
        ("air drumming", "zzz", 5, 15, "train", 0),
    ])
    split = read_kinetics_csv(csv_file, tmp_path / "root", subset="val")
    assert split.classes == ["air drumming", "applauding"]  # sorted, CSV quotes removed
    names = sorted(p.name for p, _ in split.videos)
    assert names == ["-x_y_000000_000010.mp4", "abc_000010_000020.mp4"]
    everything = build_split("kinetics", csv_file, tmp_path / "root")
    assert len(everything) == 3
    # Per-class folders (the layout of most downloads), underscores or spaces, are found.
    folder = tmp_path / "root" / "air_drumming"
    folder.mkdir(parents=True)
    (folder / "abc_000010_000020.mp4").write_bytes(b"x")
    index = next(i for i, v in enumerate(split.videos) if v.path.name.startswith("abc"))
    assert split.locate(index) == folder / "abc_000010_000020.mp4"


def test_kinetics_csv_errors_name_the_line_and_class(tmp_path):
    csv_file = tmp_path / "k.csv"
    write_kinetics_csv(csv_file, [("air drumming", "a", 0, 10, "val", 0), ("juggling fire", "b", 0, 10, "val", 0)])
    with pytest.raises(SplitFormatError, match=r"k\.csv:3: unknown class name 'juggling fire'"):
        read_kinetics_csv(csv_file, ROOT, labels=["air drumming", "abseiling"])
    restricted = read_kinetics_csv(csv_file, ROOT, labels=["air drumming"], restrict=True)
    assert len(restricted) == 1
    write_kinetics_csv(csv_file, [("a", "b", "ten", 10, "val", 0)])
    with pytest.raises(SplitFormatError, match=r"k\.csv:2: time_start/time_end"):
        read_kinetics_csv(csv_file, ROOT)
    write_kinetics_csv(csv_file, [("a", "b", 0, 10)], header="youtube_id,time_start,time_end,split")
    with pytest.raises(SplitFormatError, match=r"k\.csv:1: header lacks columns \['label'\]"):
        read_kinetics_csv(csv_file, ROOT)


# -- malformed input ------------------------------------------------------------------------------------------
def test_malformed_list_lines_are_named(tmp_path):
    good = tmp_path / "list.txt"
    good.write_text("a/v1 10 0\nb/v2 1\n\nc/with space.mp4 1\n")
    split = read_list(good, ["a", "b"], ROOT)
    assert split.videos[2] == (ROOT / "c/with space.mp4", 1)
    bad = tmp_path / "bad.txt"
    bad.write_text("a/v1 10 0\na/v2 10 0\nthis-line-has-no-label\n")
    with pytest.raises(SplitFormatError, match=r"bad\.txt:3: expected 'path label'.*this-line-has-no-label"):
        read_list(bad, ["a", "b"], ROOT)
    bad.write_text("a/v1 10 0\na/v2 10 7\n")
    with pytest.raises(SplitFormatError, match=r"bad\.txt:2: label 7 is outside the class list of 2 classes"):
        read_list(bad, ["a", "b"], ROOT)
    bad.write_text("a/v1.avi 0\na/v2.avi,1\n")  # a comma for the space
    with pytest.raises(SplitFormatError, match=r"bad\.txt:2: expected 'path label'.* after '\.avi' with ',1'"):
        read_list(bad, ["a", "b"], ROOT)


def test_ucf101_unknown_class_and_wrong_label_are_named(tmp_path):
    (tmp_path / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n")
    (tmp_path / "testlist01.txt").write_text("Archery/v_Archery_g01_c01.avi\nYoYo/v_YoYo_g01_c01.avi\n")
    with pytest.raises(SplitFormatError, match=r"testlist01\.txt:2: unknown class name 'YoYo'"):
        read_ucf101(tmp_path, ROOT)
    (tmp_path / "trainlist01.txt").write_text("Archery/v_Archery_g01_c01.avi 1\n")
    with pytest.raises(SplitFormatError, match=r"trainlist01\.txt:1: label 1 \(ApplyEyeMakeup\) disagrees"):
        read_ucf101(tmp_path, ROOT, subset="train")
    (tmp_path / "trainlist01.txt").write_text("Archery/v_Archery_g01_c01.avi 9\n")
    with pytest.raises(SplitFormatError, match=r"trainlist01\.txt:1: label 9 is outside the class list of 2 classes "
                                               r"\(classInd\.txt; labels count from 1\)"):
        read_ucf101(tmp_path, ROOT, subset="train")
    (tmp_path / "testlist01.txt").write_text("Archery/v_Archery_g01_c01.avi extra words\n")
    with pytest.raises(SplitFormatError, match=r"testlist01\.txt:1: expected"):
        read_ucf101(tmp_path, ROOT)


def test_a_comma_for_the_space_in_a_trainlist_names_the_file_and_line(tmp_path):
    (tmp_path / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n3 Biking\n")
    (tmp_path / "trainlist01.txt").write_text("Archery/v_Archery_g01_c01.avi 2\nBiking/v_Biking_g09_c01.avi,3\n")
    with pytest.raises(SplitFormatError) as caught:
        read_ucf101(tmp_path, ROOT, subset="train")
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'trainlist01.txt'}:2: expected 'Class/video.avi [label]'")
    assert "'Biking/v_Biking_g09_c01.avi,3'" in message and "',3'" in message
    (tmp_path / "clap_test_split1.txt").write_text("v1.avi 2\nv2.avi;1\n")
    with pytest.raises(SplitFormatError, match=r"clap_test_split1\.txt:2: .* after '\.avi' with ';1'"):
        read_hmdb51(tmp_path, ROOT)


def test_hmdb51_bad_mark_is_named(tmp_path):
    (tmp_path / "clap_test_split1.txt").write_text("v1.avi 2\nv2.avi 3\n")
    with pytest.raises(SplitFormatError, match=r"clap_test_split1\.txt:2: expected '<video>.avi <0\|1\|2>'"):
        read_hmdb51(tmp_path, ROOT)
    (tmp_path / "clap_test_split1.txt").write_text("v1.avi 2\n")
    with pytest.raises(SplitFormatError, match="unknown class name 'clap'"):
        read_hmdb51(tmp_path, ROOT, labels=["wave"])


def test_unknown_format_and_missing_files():
    with pytest.raises(ValueError, match="unknown split format 'foo'"):
        build_split("foo", "x.txt", ROOT, labels=["a"])
    with pytest.raises(FileNotFoundError, match="split file not found"):
        read_list("/nonexistent/list.txt", ["a"], ROOT)


def test_locate_tries_video_extensions(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "v1.avi").write_bytes(b"x")
    split = VideoSplit("s", tmp_path, ["a"], [(tmp_path / "a" / "v1", 0), (tmp_path / "a" / "v2", 0)])
    assert split.locate(0) == tmp_path / "a" / "v1.avi"
    assert split.locate(1) is None and len(split.candidates(1)) > 5


def test_several_lists_are_concatenated(tmp_path):
    (tmp_path / "one.txt").write_text("a/v1 0\n")
    (tmp_path / "two.txt").write_text("b/v2 1\n")
    split = build_split("bike", [tmp_path / "one.txt", tmp_path / "two.txt"], ROOT, labels=["a", "b"])
    assert [label for _, label in split.videos] == [0, 1]


# -- Kinetics-600 zero-shot classes -------------------------------------------------------------------------
@pytest.mark.parametrize("number", [1, 2, 3])
def test_er_zsar_split_files_agree_with_bike_class_lists(shared_data, number):
    descriptions = shared_data / "descriptions"
    from_er_zsar = load_zero_shot_classes(
        number,
        label_defn=descriptions / "kinetics620_label_defn.json",
        class_idxs=descriptions / "kinetics620_zsl_test_class_idxs.json",
    )
    from_bike = load_zero_shot_classes(number, class_list=shared_data / "lists" / "k600" / f"k160_labels_split{number}.csv")
    assert [canonical_name(c) for c in from_er_zsar] == [canonical_name(c) for c in from_bike]
    assert len(from_bike) == 160


def test_new_kinetics600_classes_and_drawn_splits(shared_data):
    k400 = read_class_list(shared_data / "lists" / "k400" / "kinetics_400_labels.csv")
    k620 = read_class_list(shared_data / "descriptions" / "kinetics620_label_defn.json")
    new = k600_new_classes(k400, k620)
    # ER-ZSAR's 620-class list is the 400 Kinetics-400 classes followed by the 220 new ones.
    assert new == k620[400:] and len(new) == 220
    for number in (1, 2, 3):
        published = load_zero_shot_classes(number, class_list=shared_data / "lists" / "k600" / f"k160_labels_split{number}.csv")
        assert {canonical_name(c) for c in published} <= {canonical_name(c) for c in new}
    drawn = [draw_zero_shot_classes(k400, k620, number, seed=0) for number in (1, 2, 3)]
    assert all(len(d) == 160 and len(set(d)) == 160 and d == sorted(d) and set(d) <= set(new) for d in drawn)
    assert drawn[0] != drawn[1] != drawn[2]
    assert draw_zero_shot_classes(k400, k620, 1, seed=0) == drawn[0]
    assert draw_zero_shot_classes(k400, k620, 1, seed=1) != drawn[0]
    with pytest.raises(ValueError, match="only 0 classes"):
        draw_zero_shot_classes(k400, k400, 1)


def test_k600_zero_shot_from_a_kinetics600_csv(tmp_path):
    csv_file = tmp_path / "k600_val.csv"
    write_kinetics_csv(csv_file, [
        ("abseiling", "a", 0, 10, "val", 0),  # a Kinetics-400 class: not in the zero-shot split
        ("adjusting glasses", "b", 1, 11, "val", 0),
        ("acting in play", "c", 2, 12, "val", 0),
    ])
    split = k600_zero_shot(2, tmp_path, ["acting in play", "adjusting glasses"], csv_file=csv_file)
    assert len(split) == 2 and split.counts() == [1, 1] and split.name == "k600-zero-shot-2"
    with pytest.raises(SplitFormatError, match="no videos for zero-shot classes"):
        k600_zero_shot(2, tmp_path, ["acting in play", "yawning"], csv_file=csv_file)


# -- few-shot ---------------------------------------------------------------------------------------------
def test_few_shot_subsets(shared_data):
    lists = shared_data / "lists" / "ucf101"
    train = read_list(lists / "train_rgb_split_1.txt", lists / "ucf_labels.csv", ROOT)
    two = few_shot(train, 2, seed=0, check="none")  # the listed videos, none read
    assert len(two) == 202 and two.counts() == [2] * 101
    assert two.videos == few_shot(train, 2, seed=0, check="none").videos  # reproducible
    assert two.videos != few_shot(train, 2, seed=1, check="none").videos
    four = few_shot(train, 4, seed=0, check="none")
    assert set(two.videos) <= set(four.videos)  # nested
    shuffled = list(train.videos)
    random.Random(5).shuffle(shuffled)
    again = few_shot(VideoSplit(train.name, train.root, train.classes, shuffled), 2, seed=0, check="none")
    assert set(again.videos) == set(two.videos)  # independent of the list order
    assert two.meta["few_shot_k"] == 2 and two.meta["few_shot_draw"]["classes_below_k"] == {}
    many = few_shot(train, 500, check="none")
    below = many.meta["few_shot_draw"]["classes_below_k"]
    assert len(below) == 101 and below["ApplyEyeMakeup"] == train.counts()[0]
    assert many.meta["few_shot_draw"]["note"].startswith("101 of 101 classes have fewer than K=500 usable videos")
    with pytest.raises(ValueError, match="no usable video"):
        few_shot(train, 2, check="file")  # /videos does not exist


def test_match_classes_relabels(tmp_path):
    split = VideoSplit("s", ROOT, ["ApplyEyeMakeup", "Archery"], [(ROOT / "x", 0), (ROOT / "y", 1)])
    moved = match_classes(split, ["archery", "apply eye makeup"])
    assert [label for _, label in moved.videos] == [1, 0]
    with pytest.raises(KeyError, match="'Archery'"):
        match_classes(split, ["apply eye makeup"])


def test_labels_outside_classes_are_rejected():
    with pytest.raises(ValueError, match="label 3, outside the 2 classes"):
        VideoSplit("s", ROOT, ["a", "b"], [(ROOT / "x", 3)])


def test_json_class_list_is_accepted(tmp_path):
    (tmp_path / "classes.json").write_text(json.dumps(["a", "b"]))
    (tmp_path / "l.txt").write_text("x 1\n")
    assert read_list(tmp_path / "l.txt", tmp_path / "classes.json", ROOT).classes == ["a", "b"]
