"""``stzsar eval`` end to end on generated video files and a tiny random checkpoint."""

import json

import pytest
import torch

from stzsar.cli.main import main
from stzsar.data.synthetic import write_video
from stzsar.eval.loading import clip_spec, load_video
from stzsar.model import build_model
from stzsar.train.checkpoint import load_model_from_checkpoint, save_checkpoint

CLASSES = ["apply eye makeup", "salsa spin", "archery"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalcli")
    torch.manual_seed(1)
    checkpoint = save_checkpoint(root / "tiny.pt", build_model("stzsar-tiny", backend="torch"))
    videos = root / "videos"
    videos.mkdir()
    for i in range(4):
        write_video(videos / f"v{i}.mp4", 6 + 3 * i, 48, 32)
    (root / "labels.csv").write_text("id,name\n" + "".join(f"{i},{n}\n" for i, n in enumerate(CLASSES)))
    # Two splits; split 2 lists a file that does not exist and one that is empty.
    (videos / "empty.mp4").write_bytes(b"")
    (root / "list_1.txt").write_text("v0.mp4 0\nv1.mp4 1\nv2.mp4 2\n")
    (root / "list_2.txt").write_text("v3.mp4 0\ngone.mp4 1\nv1.mp4 2\nempty.mp4 2\nv0.mp4 1\n")
    (root / "attributes.json").write_text(json.dumps({"archery": ["bow", "arrow"]}))
    return root


def expected(setup, list_name):
    """Top-1 of each listed readable video, from the model's forward on the decoded clip."""
    model, _ = load_model_from_checkpoint(setup / "tiny.pt")
    bank = model.encode_classes(CLASSES, {"archery": ["bow", "arrow"]})
    spec = clip_spec(model, 2)
    hits = total = 0
    for line in (setup / list_name).read_text().split("\n"):
        if not line:
            continue
        name, label = line.split()
        path = setup / "videos" / name
        if not path.exists() or path.stat().st_size == 0:
            continue
        clip, _ = load_video(path, spec)
        with torch.no_grad():
            hits += int(model(clip, bank)[0].argmax()) == int(label)
        total += 1
    return 100.0 * hits / total, total


def test_zero_shot_command_writes_the_report(setup, tmp_path, capsys):
    out = tmp_path / "report"
    args = ["eval", "--protocol", "zero-shot", "--checkpoint", str(setup / "tiny.pt"),
            "--list", str(setup / "list_{split}.txt"), "--labels", str(setup / "labels.csv"),
            "--root", str(setup / "videos"), "--splits", "1,2", "--num-frames", "2", "--workers", "0",
            "--batch-size", "2", "--device", "cpu", "--no-progress", "--attributes", str(setup / "attributes.json"),
            "--cache-dir", str(tmp_path / "cache"), "--dataset", "hmdb51", "--out", str(out)]
    assert main(args + ["--allow-unscored", "0.4"]) == 0  # split 2: 2 of 5 videos unusable
    printed = capsys.readouterr().out
    assert "| split 1 |" in printed and "mean ± std" in printed
    report = json.loads((out / "report.json").read_text())
    for name, list_name, skipped in (("split 1", "list_1.txt", 0), ("split 2", "list_2.txt", 2)):
        top1, scored = expected(setup, list_name)
        result = report["results"][name]
        assert result["videos_scored"] == scored and result["videos_skipped"] == skipped
        assert result["top1"] == pytest.approx(top1)
    reasons = sorted(s["reason"].split(" (")[0] for s in report["results"]["split 2"]["skipped_videos"])
    assert reasons == ["empty file", "file not found"]
    assert report["meta"]["attributes"].endswith("attributes.json") and report["meta"]["num_frames"] == 2
    assert report["splits"]["split 2"]["classes"] == CLASSES
    assert report["paper"]["top1"] == 52.7
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1  # one class list, cached once
    markdown = (out / "report.md").read_text()
    assert "2 video(s) could not be read and were skipped** (--allow-unscored 40%)" in markdown
    assert "| split 1 | " in markdown and " | 3 of 3 | 0 |" in markdown and " | 3 of 5 | 2 |" in markdown
    assert result["videos_listed"] == 5


def test_bad_arguments_are_explained(setup, capsys):
    base = ["eval", "--checkpoint", str(setup / "tiny.pt"), "--root", str(setup / "videos")]
    assert main(base) == 2
    assert "--list" in capsys.readouterr().err
    # Three splits asked for by name over one list without '{split}': they would all read the same file.
    assert main(base + ["--list", str(setup / "list_1.txt"), "--labels", str(setup / "labels.csv"),
                        "--splits", "1,2,3"]) == 2
    assert "no '{split}' placeholder" in capsys.readouterr().err
    assert main(base + ["--protocol", "supervised", "--list", str(setup / "list_1.txt"), "--splits", "1,2"]) == 2


def eval_args(setup, list_path, out, root=None):
    return ["eval", "--protocol", "zero-shot", "--checkpoint", str(setup / "tiny.pt"), "--list", str(list_path),
            "--labels", str(setup / "labels.csv"), "--root", str(root or setup / "videos"), "--splits", "1",
            "--num-frames", "2", "--workers", "0", "--device", "cpu", "--no-progress", "--no-cache",
            "--out", str(out)]


def test_missing_videos_fail_the_run_before_scoring(setup, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(eval_args(setup, setup / "list_2.txt", out)) == 1
    err = capsys.readouterr().err
    # list_2.txt lists 5 videos, gone.mp4 is not on disk
    assert "split 1: 1 of 5 listed videos are missing (20%; --allow-unscored allows 0%):" in err
    assert f"{setup / 'videos' / 'gone.mp4'}: file not found" in err
    assert "likely cause: most listed files are not" not in err and "likely cause:" in err
    assert not (out / "report.json").exists()


def test_a_wrong_root_fails_with_the_count_the_first_paths_and_the_cause(setup, tmp_path, capsys):
    for root, cause in ((tmp_path / "nowhere", f"--root {tmp_path / 'nowhere'} is not a folder"),
                        (tmp_path, f"these files are not under --root {tmp_path}: a wrong root")):
        assert main(eval_args(setup, setup / "list_1.txt", tmp_path / "r", root=root)) == 1
        err = capsys.readouterr().err
        assert "split 1: 3 of 3 listed videos are missing (100%" in err
        assert all(f"{root / name}: file not found" in err for name in ("v0.mp4", "v1.mp4", "v2.mp4"))
        assert f"likely cause: {cause}" in err
    # a share that allows it all: nothing scored is still no report to trust, but the user asked
    assert main(eval_args(setup, setup / "list_1.txt", tmp_path / "r", root=tmp_path) + ["--allow-unscored", "1"]) == 0
    assert " | 0 of 3 | 3 |" in (tmp_path / "r" / "report.md").read_text()


def test_unreadable_videos_fail_the_run_after_the_report(setup, tmp_path, capsys):
    listed = tmp_path / "list.txt"
    listed.write_text("v0.mp4 0\nempty.mp4 1\nv1.mp4 1\nv2.mp4 2\n")
    out = tmp_path / "r"
    assert main(eval_args(setup, listed, out)) == 1
    err = capsys.readouterr().err
    assert "split 1: 1 of 4 videos could not be scored (25%; --allow-unscored allows 0%):" in err
    assert f"{setup / 'videos' / 'empty.mp4'}: empty file" in err
    assert "likely cause: the files exist but cannot be decoded" in err
    report = json.loads((out / "report.json").read_text())  # written: it lists what was skipped
    assert (report["results"]["split 1"]["videos_scored"], report["results"]["split 1"]["videos_listed"]) == (3, 4)
    assert main(eval_args(setup, listed, out) + ["--allow-unscored", "0.2"]) == 1  # 25% > 20%
    assert main(eval_args(setup, listed, out) + ["--allow-unscored", "25%"]) == 0  # resumed from the store


def test_the_report_names_the_precision_used(setup, tmp_path):
    for asked, used in ((None, "fp32"), ("bf16", "bf16")):  # auto is fp32 on the CPU
        out = tmp_path / (asked or "auto")
        assert main(eval_args(setup, setup / "list_1.txt", out) + (["--precision", asked] if asked else [])) == 0
        report = json.loads((out / "report.json").read_text())
        assert report["meta"]["precision"] == used
        assert f"- precision: {used}\n" in (out / "report.md").read_text()
        manifest = json.loads((out / "store" / "split_1" / "manifest.json").read_text())
        assert manifest["precision"] == used  # what the engine ran in


def test_allow_unscored_takes_a_share():
    import argparse

    from stzsar.eval.unscored import parse_share

    assert parse_share("0.05") == 0.05 and parse_share("5%") == pytest.approx(0.05) and parse_share("0") == 0.0
    for bad in ("1.5", "-0.1", "five", "120%"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_share(bad)


def test_one_custom_list_is_evaluated_as_one_split(setup, tmp_path, capsys):
    out = tmp_path / "one"
    args = ["eval", "--protocol", "zero-shot", "--checkpoint", str(setup / "tiny.pt"), "--list",
            str(setup / "list_1.txt"), "--labels", str(setup / "labels.csv"), "--root", str(setup / "videos"),
            "--num-frames", "2", "--workers", "0", "--device", "cpu", "--no-progress", "--no-cache",
            "--attributes", str(setup / "attributes.json"), "--out", str(out)]
    assert main(args) == 0  # no --splits: the protocol's default is three, the list is one
    report = json.loads((out / "report.json").read_text())
    assert list(report["results"]) == ["split 1"]
    top1, scored = expected(setup, "list_1.txt")
    assert report["results"]["split 1"]["videos_scored"] == scored
    assert report["results"]["split 1"]["top1"] == pytest.approx(top1)
    assert any("evaluated as one split" in note for note in report["meta"]["notes"])
    markdown = (out / "report.md").read_text()
    assert "evaluated as one split" in markdown and "| **mean ± std** |" not in markdown
    assert "evaluated as one split" in capsys.readouterr().out  # the printed report says it too


def test_unusable_inputs_are_one_line_errors(setup, tmp_path, capsys):
    base = ["eval", "--root", str(setup / "videos"), "--list", str(setup / "list_1.txt"), "--labels",
            str(setup / "labels.csv"), "--splits", "1", "--workers", "0", "--no-progress", "--no-cache"]
    not_a_checkpoint = tmp_path / "x.pt"
    not_a_checkpoint.write_bytes(b"junk")
    assert main(base + ["--checkpoint", str(not_a_checkpoint)]) == 2
    assert "x.pt" in capsys.readouterr().err
    bad_list = tmp_path / "bad.txt"
    bad_list.write_text("v0.mp4 0\nv1.mp4 seven\n")
    args = ["eval", "--checkpoint", str(setup / "tiny.pt"), "--root", str(setup / "videos"), "--list", str(bad_list),
            "--labels", str(setup / "labels.csv"), "--splits", "1", "--workers", "0", "--no-progress", "--no-cache",
            "--num-frames", "2", "--device", "cpu"]
    assert main(args) == 2
    assert "bad.txt:2" in capsys.readouterr().err
    strict = tmp_path / "strict.txt"
    strict.write_text("v0.mp4 0\nempty.mp4 1\n")
    args[args.index(str(bad_list))] = str(strict)
    assert main(args + ["--strict", "--out", str(tmp_path / "r")]) == 1
    assert "empty.mp4: empty file" in capsys.readouterr().err


def test_split_patterns_resolve_on_the_real_lists(shared_data, tmp_path):
    from stzsar.cli.eval import build_eval_split, guess_dataset
    from stzsar.data import ClipSpec

    lists = shared_data / "lists"
    pattern, labels = str(lists / "k600" / "test_split{split}_exist.txt"), str(lists / "k600" / "k160_labels_split{split}.csv")
    assert guess_dataset(pattern, labels) == "k600"
    split, video_split = build_eval_split("bike", pattern, labels, str(tmp_path), 1, ClipSpec(num_frames=2, size=32),
                                          strict=False)
    assert (split.name, len(split.classes), len(split.dataset)) == ("split 1", 160, 14119)
    assert split.video_path(0) == str(video_split.videos[0].path)
    assert "test_split1_exist.txt" in split.source and "k160_labels_split1.csv" in split.source
    ucf = str(lists / "ucf101" / "val_rgb_split_{split}.txt")
    assert guess_dataset(ucf) == "ucf101" and guess_dataset(str(lists / "hmdb51" / "x.txt")) == "hmdb51"
    split, _ = build_eval_split("bike", ucf, str(lists / "ucf101" / "ucf_labels.csv"), str(tmp_path), 1,
                                ClipSpec(num_frames=2, size=32), strict=False)
    assert (len(split.classes), len(split.dataset)) == (101, 3783)
