"""Configuration, shipped config files, optimizer groups, the schedule and the data order."""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

import pytest
import torch
import yaml

from stzsar.config import (
    Config,
    ConfigError,
    apply_overrides,
    config_to_dict,
    load_config,
    save_config,
)

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "stzsar" / "configs"
CONFIGS = sorted(SHIPPED.glob("*.yaml"))


def test_defaults_are_the_papers():
    config = Config()
    assert (config.model.name, config.model.pretrained) == ("ViT-B-16", "openai")
    assert config.optim.lr == 5e-5 and config.optim.weight_decay == 0.05
    assert config.train.epochs == 30 and config.train.batch_size == 64
    assert config.data.num_frames == 16 and config.data.num_attributes == 8
    assert config.eval.shots == [2, 4, 8, 16]


def test_overrides_convert_types():
    config = load_config(None, [
        "optim.lr=1e-4", "train.epochs=3", "model.pretrained=null", "model.frozen_blocks=4",
        "optim.betas=[0.9, 0.98]", "eval.shots=2,4", "train.compile=yes", "data.root=/tmp/x y",
        "model.template=A video of {}.", "optim.warmup_epochs=1",
    ])
    assert config.optim.lr == 1e-4 and isinstance(config.optim.lr, float)
    assert config.train.epochs == 3 and isinstance(config.train.epochs, int)
    assert config.model.pretrained is None and config.model.frozen_blocks == 4
    assert config.optim.betas == (0.9, 0.98)
    assert config.eval.shots == [2, 4]
    assert config.train.compile is True
    assert config.data.root == "/tmp/x y"
    assert config.model.template == "A video of {}."
    assert config.optim.warmup_epochs == 1.0 and isinstance(config.optim.warmup_epochs, float)


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown key optim.lrr"),
    ("optimizer.lr=1", "unknown section 'optimizer'"),
    ("optim.lr=fast", "optim.lr = 'fast' is not a valid float"),
    ("train.epochs=2.5", "train.epochs"),
    ("train.compile=maybe", "expected true or false"),
    ("model.name=null", "null is not allowed"),
    ("lr=1", "section.key"),
    ("optim.lr", "section.key=value"),
    ("train.precision=fp8", "train.precision = 'fp8'"),
    ("train.batch_size=0", "train.batch_size must be positive"),
    ("model.template=no braces", "must contain '{}'"),
])
def test_bad_overrides_say_what_and_where(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


def test_yaml_file_base_chain_and_roundtrip(tmp_path):
    (tmp_path / "base.yaml").write_text("optim:\n  lr: 1.0e-3\ntrain:\n  epochs: 7\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain:\n  epochs: 9\n")
    config = load_config(tmp_path / "child.yaml", ["train.seed=3"])
    assert (config.optim.lr, config.train.epochs, config.train.seed) == (1e-3, 9, 3)
    saved = save_config(config, tmp_path / "run" / "config.yaml")
    assert load_config(saved) == config
    assert yaml.safe_load(saved.read_text())["optim"]["betas"] == [0.9, 0.999]

    (tmp_path / "bad.yaml").write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key train.epoch"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "loop.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_overrides_leave_the_base_untouched():
    base = Config()
    changed = apply_overrides(base, ["eval.shots=[1]"])
    assert base.eval.shots == [2, 4, 8, 16] and changed.eval.shots == [1]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path, tmp_path):
    config = load_config(path)
    assert config_to_dict(load_config(save_config(config, tmp_path / "config.yaml"))) == config_to_dict(config)


def test_shipped_paper_settings():
    b16 = load_config(SHIPPED / "k400_vitb16_f16.yaml")
    l14 = load_config(SHIPPED / "k400_vitl14_f8.yaml")
    assert (b16.model.name, b16.data.num_frames, b16.model.frozen_blocks) == ("ViT-B-16", 16, 6)
    assert (l14.model.name, l14.data.num_frames, l14.model.frozen_blocks) == ("ViT-L-14", 8, 12)
    for config in (b16, l14):
        assert (config.optim.lr, config.optim.weight_decay, config.train.epochs, config.train.batch_size) == \
            (5e-5, 0.05, 30, 64)
    for name in ("fewshot_ucf101.yaml", "fewshot_hmdb51.yaml"):
        few = load_config(SHIPPED / name)
        assert few.eval.protocol == "few-shot" and few.eval.fewshot_epochs == 50
        assert few.eval.shots == [2, 4, 8, 16]


def test_demo_yaml_matches_the_built_in_demo_config():
    from stzsar.demo.runner import demo_config

    assert config_to_dict(demo_config(config_path=SHIPPED / "demo.yaml")) == config_to_dict(demo_config())



# Configurations by name: they ship with the package and work outside the clone.


def test_config_names_resolve_from_an_installed_build(tmp_path):
    """Build the package as an install would (setuptools' build_py with the package data of
    pyproject.toml), then, from a folder that holds no configs/, load every config by name."""
    import json
    import os
    import subprocess
    import sys

    build = tmp_path / "lib"
    built = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(build)], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    assert sorted(p.name for p in (build / "stzsar" / "configs").glob("*.yaml")) == [p.name for p in CONFIGS]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import json, stzsar.config as c; "
            "print(json.dumps({'module': c.__file__, 'configs': {n: [str(c.resolve_config(n)), "
            "c.config_to_dict(c.load_config(n))] for n in c.builtin_configs()}}))")
    env = dict(os.environ, PYTHONPATH=str(build))
    result = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(answer["module"]).resolve().is_relative_to(build.resolve())  # the build, not the clone
    assert sorted(answer["configs"]) == [p.stem for p in CONFIGS]
    for name, (path, values) in answer["configs"].items():
        assert Path(path).resolve() == (build / "stzsar" / "configs" / f"{name}.yaml").resolve()
        assert values == config_to_dict(load_config(SHIPPED / f"{name}.yaml"))  # the clone's file, by path


def test_config_by_name_equals_the_file_and_a_path_still_works(tmp_path, monkeypatch):
    from stzsar.config import builtin_configs, resolve_config

    monkeypatch.chdir(tmp_path)
    assert set(builtin_configs()) == {p.stem for p in CONFIGS}
    for path in CONFIGS:
        by_path = config_to_dict(load_config(path))
        for name in (path.stem, path.name, path.stem.upper()):
            assert config_to_dict(load_config(name)) == by_path
    # A file of one's own, by absolute and by relative path; an existing file wins over a name.
    own = tmp_path / "k400_vitb16_f16.yaml"
    own.write_text("base: k400_vitl14_f8\ntrain:\n  epochs: 3\n")
    assert resolve_config("k400_vitb16_f16.yaml") == Path("k400_vitb16_f16.yaml")
    for value in ("k400_vitb16_f16.yaml", str(own)):
        config = load_config(value)
        assert config.train.epochs == 3 and config.model.name == "ViT-L-14"  # its base, by name
    assert load_config("k400_vitb16_f16").train.epochs == 30  # no .yaml: no such file, the built-in


def test_unknown_config_name_lists_the_built_in_ones(tmp_path, monkeypatch, capsys):
    from stzsar.cli.main import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config("k400_vitb16")
    message = str(info.value)
    assert "'k400_vitb16'" in message
    assert all(p.stem in message for p in CONFIGS)
    assert main(["train", "--config", "configs/k400_vitb16_f16.yaml", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "configs/k400_vitb16_f16.yaml" in err and "k400_vitb16_f16, k400_vitl14_f8" in err
    assert main(["train", "--config", "k400_vitb16_f16", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["name"] == "ViT-B-16"


def test_resources_list_shows_the_configs(capsys):
    import json

    from stzsar.cli.main import main

    assert main(["resources", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["configs"]
    assert [c["name"] for c in listed] == [p.stem for p in CONFIGS]
    assert all(c["about"] for c in listed)
    assert main(["resources", "list"]) == 0
    text = capsys.readouterr().out
    assert "--config NAME" in text and all(f"\n{p.stem} " in text for p in CONFIGS)


# ---------------------------------------------------------------------------------------------


def test_no_weight_decay_on_norms_biases_and_embeddings():
    from stzsar.model import build_model
    from stzsar.train.optim import build_optimizer, param_groups

    model = build_model("stzsar-tiny", None, frozen_blocks=0, temporal_layers=1)
    groups = param_groups(model, 0.05)
    decay, no_decay = set(groups[0]["names"]), set(groups[1]["names"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decay | no_decay == trainable and not decay & no_decay
    for name in no_decay:
        param = dict(model.named_parameters())[name]
        assert param.ndim < 2 or "embedding" in name or "position" in name, name
    assert "video.visual.positional_embedding" in no_decay
    assert "video.temporal.position" in no_decay
    assert any(n.endswith("ln_1.weight") for n in no_decay) and any(n.endswith(".bias") for n in no_decay)
    assert "sti.patch_proj.weight" in decay and any(n.endswith("attn.in_proj_weight") for n in decay)
    assert not any(n.startswith("text.") for n in decay | no_decay)  # the text tower is frozen
    optimizer = build_optimizer(model, 5e-5, 0.05)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]


def test_cosine_schedule_with_warmup():
    from stzsar.train.optim import build_scheduler

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=2.0)
    scheduler = build_scheduler(optimizer, total_steps=10, warmup_steps=2, warmup_start=0.0, min_ratio=0.1)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    lrs.append(optimizer.param_groups[0]["lr"])
    # Independent values: linear 0 -> 2 over 2 steps, then 0.2 + 1.8 * (1 + cos(pi * k / 8)) / 2.
    expected = [0.0, 1.0] + [0.2 + 1.8 * (1 + math.cos(math.pi * k / 8)) / 2 for k in range(9)]
    assert lrs == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------


def test_epoch_sampler_shards_global_batches_and_resumes():
    from stzsar.train.sampling import EpochSampler

    size, per_rank, world = 23, 3, 2
    samplers = [EpochSampler(size, per_rank, seed=5, rank=r, world_size=world) for r in range(world)]
    single = EpochSampler(size, per_rank * world, seed=5)
    assert samplers[0].batches_per_epoch == single.batches_per_epoch == 23 // 6
    for epoch in (0, 1):
        for s in samplers + [single]:
            s.set_epoch(epoch)
        ranks = [list(s) for s in samplers]
        whole = list(single)
        for b in range(single.batches_per_epoch):
            parts = [r[b * per_rank:(b + 1) * per_rank] for r in ranks]
            assert parts[0] + parts[1] == whole[b * 6:(b + 1) * 6]
        assert len(set(whole)) == len(whole) == 18  # no repeats; the 5-video tail is dropped
    assert list(samplers[0]) != (samplers[0].set_epoch(0) or list(samplers[0]))  # epochs differ
    samplers[1].set_epoch(1, skip_batches=2)
    tail = list(samplers[1])
    samplers[1].set_epoch(1)
    assert tail == list(samplers[1])[2 * per_rank:]
    with pytest.raises(ValueError, match="fewer than one global batch"):
        EpochSampler(5, 3, world_size=2)


def test_seeded_dataset_depends_on_seed_epoch_index_only():
    from stzsar.train.sampling import SeededDataset

    class Draws(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return (random.random(), float(torch.rand(1)), i)

    data = SeededDataset(Draws(), seed=1)
    first = [data[i] for i in (2, 0, 1)]
    torch.manual_seed(123)
    random.seed(99)
    state = (random.getstate(), torch.get_rng_state())
    again = [data[i] for i in (1, 2, 0)]
    assert (random.getstate(), torch.equal(torch.get_rng_state(), state[1])) == (state[0], True)
    assert sorted(first, key=lambda x: x[2]) == sorted(again, key=lambda x: x[2])
    data.set_epoch(1)
    assert data[0] != first[1]


def test_train_command_prints_config_and_rejects_bad_settings(capsys):
    from stzsar.cli.main import main

    assert main(["train", "--config", str(SHIPPED / "k400_vitl14_f8.yaml"), "--set", "optim.lr=1e-4",
                 "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["name"] == "ViT-L-14" and printed["optim"]["lr"] == 1e-4
    assert printed["train"]["grad_checkpointing"] is True
    assert main(["train", "--set", "optim.lrr=1"]) == 2
    assert "unknown key optim.lrr" in capsys.readouterr().err
    # No data configured: a clear message (before any model is built), exit status 2.
    assert main(["train", "--set", "model.name=stzsar-tiny", "--set", "model.pretrained=null"]) == 2
    assert "training needs data.root and data.train_list" in capsys.readouterr().err
    assert main(["demo", "--train-per-class", "0"]) == 2
