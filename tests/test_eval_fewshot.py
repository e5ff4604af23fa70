"""``stzsar eval --protocol few-shot`` through the real trainer, on generated videos (tiny model)."""

import json

import pytest
import torch

from stzsar.cli.main import main
from stzsar.data.synthetic import write_video
from stzsar.eval.loading import clip_spec, load_video
from stzsar.model import build_model
from stzsar.train.checkpoint import load_model_from_checkpoint, read_checkpoint, save_checkpoint

CLASSES = ["archery", "bowling", "surfing"]


def test_each_k_is_fine_tuned_on_k_videos_per_class_then_evaluated(tmp_path, capsys):
    torch.manual_seed(2)
    start = save_checkpoint(tmp_path / "start.pt", build_model("stzsar-tiny", backend="torch"))
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(6):
        write_video(videos / f"v{i}.mp4", 5 + i, 48, 32)
    (tmp_path / "labels.csv").write_text("id,name\n0,archery\n1,bowling\n2,surfing\n")
    # Two training videos per class; three test videos, one of them unreadable.
    (tmp_path / "train.txt").write_text("v0.mp4 0\nv1.mp4 0\nv2.mp4 1\nv3.mp4 1\nv4.mp4 2\nv5.mp4 2\n")
    (tmp_path / "test.txt").write_text("v5.mp4 0\nv0.mp4 1\nmissing.mp4 2\nv3.mp4 2\n")
    out = tmp_path / "report"
    code = main(["eval", "--protocol", "few-shot", "--shots", "1,2", "--epochs", "1", "--checkpoint", str(start),
                 "--train-list", str(tmp_path / "train.txt"), "--list", str(tmp_path / "test.txt"),
                 "--labels", str(tmp_path / "labels.csv"), "--root", str(videos), "--dataset", "hmdb51",
                 "--num-frames", "2", "--workers", "0", "--no-progress", "--no-cache", "--device", "cpu",
                 "--out", str(out), "--set", "train.batch_size=3", "--set", "data.num_workers=0",
                 "--set", "train.device=cpu", "--set", "train.tensorboard=false",
                 "--set", "optim.warmup_epochs=0", "--set", "optim.lr=1e-3",
                 "--allow-unscored", "0.25"])  # missing.mp4: 1 of the 4 test videos
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["results"]) == ["K=1", "K=2"]
    assert report["paper"]["top1_by_k"]["2"] == 60.4
    checkpoints = report["meta"]["few_shot_checkpoints"]
    for k, steps in ((1, 1), (2, 2)):  # K videos x 3 classes, batches of 3: K steps in the one epoch
        payload = read_checkpoint(checkpoints[f"K={k}"])
        assert payload["step"] == steps
        # The reported accuracy is that of the fine-tuned checkpoint on the readable test videos.
        model, _ = load_model_from_checkpoint(checkpoints[f"K={k}"])
        bank = model.encode_classes(CLASSES)
        hits = 0
        for name, label in (("v5.mp4", 0), ("v0.mp4", 1), ("v3.mp4", 2)):
            clip, _ = load_video(videos / name, clip_spec(model, 2))
            with torch.no_grad():
                hits += int(model(clip, bank)[0].argmax()) == label
        result = report["results"][f"K={k}"]
        assert result["top1"] == pytest.approx(100 * hits / 3)
        assert result["videos_scored"] == 3 and result["videos_skipped"] == 1
    # Both runs started from the same weights and moved away from them.
    first, second = (read_checkpoint(checkpoints[k])["model"] for k in ("K=1", "K=2"))
    original = read_checkpoint(start)["model"]
    def moved(a, b):
        return any(not torch.equal(a[key], b[key]) for key in a)

    assert moved(first, original) and moved(second, original) and moved(first, second)
    markdown = (out / "report.md").read_text()
    assert "| K=2 |" in markdown and "| 63.9 |" not in markdown and "60.4 |" in markdown
    assert "1 video(s) could not be read" in markdown


def test_fine_tuning_takes_the_checkpoint_settings_then_set_and_prints_them(tmp_path, capsys):
    from stzsar.config import Config

    trained_with = Config()
    trained_with.optim.lr = 2e-3
    trained_with.optim.warmup_epochs = 0.0
    trained_with.data.hflip = 0.0
    trained_with.train.tensorboard = False
    trained_with.train.device = "cpu"
    trained_with.train.max_steps = 100000  # the pre-training run's length: not inherited
    torch.manual_seed(4)
    start = save_checkpoint(tmp_path / "start.pt", build_model("stzsar-tiny", backend="torch"), config=trained_with)
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(4):
        write_video(videos / f"v{i}.mp4", 5 + i, 48, 32)
    (tmp_path / "labels.csv").write_text("id,name\n0,archery\n1,bowling\n")
    (tmp_path / "train.txt").write_text("v0.mp4 0\nv1.mp4 0\nv2.mp4 1\nv3.mp4 1\n")
    (tmp_path / "test.txt").write_text("v1.mp4 0\nv2.mp4 1\n")
    out = tmp_path / "report"
    code = main(["eval", "--protocol", "few-shot", "--shots", "2", "--epochs", "1", "--checkpoint", str(start),
                 "--train-list", str(tmp_path / "train.txt"), "--list", str(tmp_path / "test.txt"),
                 "--labels", str(tmp_path / "labels.csv"), "--root", str(videos), "--num-frames", "2",
                 "--workers", "0", "--no-progress", "--no-cache", "--device", "cpu", "--out", str(out),
                 "--set", "optim.weight_decay=0.3"])
    assert code == 0
    printed = capsys.readouterr().out
    for line in ("optim.lr = 0.002", "optim.weight_decay = 0.3", "optim.warmup_epochs = 0.0", "data.hflip = 0.0",
                 "data.num_workers = 0", "train.batch_size = 64", "train.epochs = 1"):
        assert line in printed
    report = json.loads((out / "report.json").read_text())
    tuned = report["meta"]["finetune"]
    assert tuned["settings"]["optim.lr"] == 0.002 and tuned["settings"]["data.num_workers"] == 0
    # 2 videos x 2 classes, fewer than the batch of 64: trained with batches of 4, and said so.
    assert tuned["per_k"]["K=2"]["batch_size"] == 4 and "fewer than train.batch_size=64" in tuned["per_k"]["K=2"]["note"]
    assert "trained with batches of 4" in (out / "report.md").read_text()
    # What the trainer actually used is what was printed.
    used = read_checkpoint(report["meta"]["few_shot_checkpoints"]["K=2"])
    assert used["config"]["optim"]["lr"] == 0.002 and used["config"]["optim"]["weight_decay"] == 0.3
    assert used["config"]["data"]["hflip"] == 0.0 and used["config"]["data"]["num_workers"] == 0
    assert used["config"]["train"]["batch_size"] == 4 and used["config"]["train"]["max_steps"] is None
    assert used["step"] == 1  # one epoch of one batch of 4
