"""Few-shot draws take usable videos only (checked as ``stzsar data inspect`` checks them), stay
reproducible and nested, and say which classes got fewer than K."""

import json

import pytest

from stzsar.cli.main import main
from stzsar.data.dataset import check_video
from stzsar.data.protocols import few_shot
from stzsar.data.synthetic import write_video


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Class "run": 5 good videos; "jump": 2 good, 3 bad (empty, text, missing); "swim": 1 good."""
    root = tmp_path_factory.mktemp("fewshot")
    for name in ("run", "jump", "swim"):
        (root / name).mkdir()
    for i in range(5):
        write_video(root / "run" / f"r{i}.webm", 6 + i, codec="vp9")
    for i in range(2):
        write_video(root / "jump" / f"j{i}.mp4", 6, codec="h264")
    (root / "jump" / "j2.mp4").write_bytes(b"")
    (root / "jump" / "j3.mp4").write_text("not a video\n" * 10)
    write_video(root / "swim" / "s0.avi", 6, codec="mjpeg")
    lines = [f"run/r{i}.webm 0" for i in range(5)] + [f"jump/j{i}.mp4 1" for i in range(5)] + ["swim/s0.avi 2"]
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    (root / "labels.csv").write_text("id,name\n0,run\n1,jump\n2,swim\n")
    return root


def make_split(root):
    from stzsar.data.splits import read_list

    return read_list(root / "list.txt", root / "labels.csv", root)


def usable(split, index):
    return check_video(split, index).usable


def test_draws_only_usable_videos_and_names_the_classes_below_k(root):
    split = make_split(root)
    for k in (1, 2, 3, 4):
        subset = few_shot(split, k, seed=0)
        assert all(usable(subset, i) for i in range(len(subset)))
        draw = subset.meta["few_shot_draw"]
        expected = {"run": min(k, 5), "jump": min(k, 2), "swim": 1}
        assert subset.counts() == [expected["run"], expected["jump"], expected["swim"]]
        assert draw["classes_below_k"] == {name: n for name, n in expected.items() if n < k}
        assert all(item["status"] in ("missing", "unreadable") for item in draw["unusable"])
    note = few_shot(split, 3, seed=0).meta["few_shot_draw"]["note"]
    assert note == "2 of 3 classes have fewer than K=3 usable videos and train on what they have: jump (2), swim (1)"


def test_the_draw_is_reproducible_nested_and_the_same_with_any_number_of_threads(root):
    split = make_split(root)
    two = few_shot(split, 2, seed=4, workers=1)
    assert two.videos == few_shot(split, 2, seed=4, workers=4).videos
    four = few_shot(split, 4, seed=4)
    assert set(two.videos) <= set(four.videos)
    # Each class takes the first K usable videos of the order the unchecked draw shuffles it into.
    order = few_shot(split, 5, seed=4, check="none")
    for label in range(3):
        shuffled = [i for i, v in enumerate(order.videos) if v.label == label]
        first = [order.videos[i] for i in shuffled if usable(order, i)][:2]
        assert [v for v in two.videos if v.label == label] == first


def test_unreadable_videos_are_passed_over_with_their_reason(root):
    split = make_split(root)
    subset = few_shot(split, 5, seed=0)
    reasons = {item["path"].rsplit("/", 1)[1]: item["reason"] for item in subset.meta["few_shot_draw"]["unusable"]}
    assert reasons["j2.mp4"] == "empty file (0 bytes)"
    assert reasons["j3.mp4"].startswith("not a readable video")
    assert reasons["j4.mp4"] == "file not found"
    # The file check (data inspect without --decode) lets the text file through.
    files = few_shot(split, 5, seed=0, check="file")
    assert sorted(v.path.name for v in files.videos if v.label == 1) == ["j0.mp4", "j1.mp4", "j3.mp4"]


def test_data_inspect_few_shot_reports_the_draw(root, capsys):
    args = ["data", "inspect", "--format", "bike", "--list", str(root / "list.txt"), "--labels",
            str(root / "labels.csv"), "--root", str(root), "--few-shot", "2", "--decode"]
    assert main(args + ["--json"]) == 1  # swim has one usable video of K=2
    report = json.loads(capsys.readouterr().out)
    assert report["videos_per_class"] == {"run": 2, "jump": 2, "swim": 1}
    assert report["unreadable"] == 0 and report["missing"] == 0
    assert report["few_shot"]["classes_below_k"] == {"swim": 1}
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "1 of 3 classes have fewer than K=2 usable videos and train on what they have: swim (1)" in out
    assert out.rstrip().endswith("NOT OK: some classes have fewer than K=2 usable videos")
    assert main(args[:-2] + ["1", "--decode"]) == 0


def test_the_few_shot_evaluation_report_says_which_classes_got_fewer_than_k(tmp_path):
    """``stzsar eval --protocol few-shot`` with an unreadable training video: it is not drawn, and
    the report names the class and how many videos it trained on."""
    import torch

    from stzsar.model import build_model
    from stzsar.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    start = save_checkpoint(tmp_path / "start.pt", build_model("stzsar-tiny", backend="torch"))
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(5):
        write_video(videos / f"v{i}.mp4", 6 + i, 48, 32)
    (videos / "broken.mp4").write_text("not a video\n" * 10)
    (tmp_path / "labels.csv").write_text("id,name\n0,archery\n1,bowling\n")
    (tmp_path / "train.txt").write_text("v0.mp4 0\nv1.mp4 0\nv2.mp4 1\nbroken.mp4 1\n")
    (tmp_path / "test.txt").write_text("v3.mp4 0\nv4.mp4 1\n")
    out = tmp_path / "report"
    code = main(["eval", "--protocol", "few-shot", "--shots", "2", "--epochs", "1", "--checkpoint", str(start),
                 "--train-list", str(tmp_path / "train.txt"), "--list", str(tmp_path / "test.txt"),
                 "--labels", str(tmp_path / "labels.csv"), "--root", str(videos), "--dataset", "custom",
                 "--num-frames", "2", "--workers", "0", "--no-progress", "--no-cache", "--device", "cpu",
                 "--out", str(out), "--set", "train.batch_size=3", "--set", "data.num_workers=0",
                 "--set", "train.device=cpu", "--set", "train.tensorboard=false",
                 "--set", "optim.warmup_epochs=0"])
    assert code == 0
    note = "1 of 2 classes have fewer than K=2 usable videos and train on what they have: bowling (1)"
    assert note in (out / "report.md").read_text()
    report = json.loads((out / "report.json").read_text())
    draw = report["meta"]["finetune"]["per_k"]["K=2"]["subset_meta"]["few_shot_draw"]
    assert draw["classes_below_k"] == {"bowling": 1}
    assert [item["path"].rsplit("/", 1)[1] for item in draw["unusable"]] == ["broken.mp4"]
