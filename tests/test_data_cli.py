"""``stzsar data inspect``: counts, missing and unreadable files, exit codes, JSON."""

import argparse
import json
import subprocess
import sys

from stzsar.cli import data as data_cli
from stzsar.data.synthetic import write_video


def run(argv):
    parser = argparse.ArgumentParser(prog="stzsar")
    data_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_a_root_without_videos_reports_counts_then_missing_files(shared_data, tmp_path, capsys):
    lists = shared_data / "lists" / "ucf101"
    code = run(["data", "inspect", "--format", "bike", "--list", str(lists / "val_rgb_split_1.txt"),
                "--labels", str(lists / "ucf_labels.csv"), "--root", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1
    lines = out.splitlines()
    assert "classes: 101" in lines and "videos:  3783" in lines
    assert "missing: 3783" in lines
    first_missing = next(i for i, line in enumerate(lines) if line.startswith("  missing: "))
    assert first_missing > lines.index("videos:  3783")
    assert sum(line.startswith("  missing: ") for line in lines) == 3783
    assert f"  missing: {tmp_path}/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01" in lines
    assert any(line.split()[1:] == ["ApplyEyeMakeup", "44"] for line in lines)  # videos per class


def test_json_is_one_object_with_the_counts(shared_data, tmp_path, capsys):
    lists = shared_data / "lists" / "k600"
    code = run(["data", "inspect", "--format", "bike", "--list", str(lists / "test_split1_exist.txt"),
                "--labels", str(lists / "k160_labels_split1.csv"), "--root", str(tmp_path), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert (report["classes"], report["videos"], report["found"], report["missing"]) == (160, 14119, 0, 14119)
    assert sum(report["videos_per_class"].values()) == 14119 and report["ok"] is False
    assert len(report["missing_files"]) == 14119


def test_decode_checks_every_file(tmp_path, capsys):
    root = tmp_path / "videos"
    (root / "wave").mkdir(parents=True)
    write_video(root / "wave" / "good.webm", 10, codec="vp9")
    write_video(root / "wave" / "good2.mp4", 5, codec="h264")
    (root / "wave" / "text.mp4").write_text("not a video")
    (tmp_path / "list.txt").write_text("wave/good 0\nwave/good2.mp4 0\nwave/text.mp4 0\n")
    (tmp_path / "labels.csv").write_text("id,name\n0,wave\n")
    base = ["data", "inspect", "--format", "bike", "--list", str(tmp_path / "list.txt"),
            "--labels", str(tmp_path / "labels.csv"), "--root", str(root), "--json"]
    # Without --decode a text file named .mp4 passes (it exists and is not empty) ...
    assert run(base) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    # ... with --decode it does not.
    assert run(base + ["--decode"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["unreadable"] == 1 and report["found"] == 3
    assert report["unreadable_files"][0]["path"].endswith("text.mp4")
    assert "not a readable video" in report["unreadable_files"][0]["reason"]
    (root / "wave" / "text.mp4").unlink()
    (tmp_path / "list.txt").write_text("wave/good 0\nwave/good2.mp4 0\n")
    assert run(base + ["--decode"]) == 0


def test_a_malformed_list_exits_2_naming_the_line(tmp_path, capsys):
    (tmp_path / "list.txt").write_text("a/v1 0\nbroken\n")
    (tmp_path / "labels.csv").write_text("id,name\n0,a\n")
    code = run(["data", "inspect", "--format", "bike", "--list", str(tmp_path / "list.txt"),
                "--labels", str(tmp_path / "labels.csv"), "--root", str(tmp_path)])
    assert code == 2
    assert f"{tmp_path / 'list.txt'}:2: expected 'path label'" in capsys.readouterr().err


def test_few_shot_subset_of_a_split_without_videos(shared_data, tmp_path, capsys):
    # Without --decode the draw checks files as inspect does: none exists here, so none is drawn.
    lists = shared_data / "lists" / "ucf101"
    code = run(["data", "inspect", "--format", "bike", "--list", str(lists / "train_rgb_split_1.txt"),
                "--labels", str(lists / "ucf_labels.csv"), "--root", str(tmp_path), "--few-shot", "4"])
    assert code == 2
    assert "no usable video to draw a 4-shot subset from (9537 listed" in capsys.readouterr().err


def test_videos_per_class_when_all_classes_tie_and_when_they_do_not(tmp_path, capsys):
    (tmp_path / "labels.csv").write_text("id,name\n0,a\n1,b\n2,c\n")
    base = ["data", "inspect", "--format", "bike", "--labels", str(tmp_path / "labels.csv"), "--root", str(tmp_path),
            "--list", str(tmp_path / "list.txt")]
    (tmp_path / "list.txt").write_text("a/1 0\na/2 0\nb/1 1\nb/2 1\nc/1 2\nc/2 2\n")
    run(base)
    assert "videos per class: all 3 classes have 2 videos" in capsys.readouterr().out.splitlines()
    (tmp_path / "list.txt").write_text("a/1 0\nb/1 1\nb/2 1\nb/3 1\nc/1 2\n")
    run(base)
    assert "videos per class: min 1 (a and 1 more), max 3 (b), mean 1.7" in capsys.readouterr().out.splitlines()


def test_a_label_outside_the_class_list_says_so(tmp_path, capsys):
    (tmp_path / "classInd.txt").write_text("".join(f"{i + 1} C{i}\n" for i in range(101)))
    (tmp_path / "trainlist01.txt").write_text("C3/v_C3_g01_c01.avi 4\nC3/v_C3_g01_c02.avi 109\n")
    code = run(["data", "inspect", "--format", "ucf101", "--list", str(tmp_path), "--subset", "train",
                "--root", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "trainlist01.txt:2: label 109 is outside the class list of 101 classes (classInd.txt; labels count from 1)" in err
    assert "(?)" not in err


def test_the_stzsar_command_has_data_inspect(tmp_path):
    (tmp_path / "list.txt").write_text("a/v1 0\n")
    (tmp_path / "labels.csv").write_text("id,name\n0,a\n")
    result = subprocess.run(
        [sys.executable, "-m", "stzsar.cli", "data", "inspect", "--format", "bike", "--list",
         str(tmp_path / "list.txt"), "--labels", str(tmp_path / "labels.csv"), "--root", str(tmp_path), "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1, result.stderr[-2000:]  # 1: the one listed video is missing
    assert json.loads(result.stdout)["missing"] == 1


def test_the_same_cause_reads_the_same_with_and_without_decode(tmp_path, capsys):
    (tmp_path / "wave").mkdir()
    (tmp_path / "wave" / "empty.mp4").write_bytes(b"")
    (tmp_path / "list.txt").write_text("wave/empty.mp4 0\n")
    (tmp_path / "labels.csv").write_text("id,name\n0,wave\n")
    base = ["data", "inspect", "--format", "bike", "--list", str(tmp_path / "list.txt"),
            "--labels", str(tmp_path / "labels.csv"), "--root", str(tmp_path)]
    outputs = []
    for extra in ([], ["--decode"]):
        assert run(base + extra) == 1
        outputs.append(capsys.readouterr().out.splitlines())
    for lines in outputs:
        assert "unreadable: 1" in lines
        assert f"  unreadable: {tmp_path / 'wave' / 'empty.mp4'}: empty file (0 bytes)" in lines
        assert not any("undecodable" in line for line in lines)
