"""``stzsar train``: fine-tune the model (docs/method.md section 5) on one CPU, one GPU, or many with torchrun.

Examples::

    # Kinetics-400, the paper's ViT-B/16 setting, one GPU
    stzsar train --config k400_vitb16_f16 --set data.root=/data/k400

    # the same on 8 GPUs (the global batch stays train.batch_size = 64)
    torchrun --nproc_per_node 8 -m stzsar.cli train --config k400_vitb16_f16

    # continue a killed run where it stopped (same data order; without --config the
    # configuration stored in the checkpoint is used)
    stzsar train --resume runs/k400_vitb16_f16

Ctrl-C stops after the optimizer step in flight, writes a checkpoint of it and prints the
``--resume`` command that continues the run (exit status 130); a second Ctrl-C stops at once
(exit status 130; a checkpoint it cuts short is discarded, the earlier ones stay whole).

A run whose videos cannot be read stops with exit status 1, naming how many, the first paths and
the likely cause: a micro-batch without a readable video, or more unreadable videos than
``data.max_unreadable`` (a share of the split, default 0.01) allows.

Settings come from the defaults, then ``--config FILE_OR_NAME`` (a YAML file, or a configuration
that ships with stzsar by name: ``stzsar resources list``), then ``--set section.key=value``
overrides (e.g. ``--set optim.lr=1e-4 --set train.epochs=10``); the resolved configuration is
saved as ``<train.output_dir>/config.yaml``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train the model on a video dataset (torchrun for several devices)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="YAML",
                        help="configuration file, or the name of a built-in one (k400_vitb16_f16, k400_vitl14_f8, ...: stzsar resources list)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a configuration value, e.g. --set optim.lr=1e-4 (repeatable)")
    parser.add_argument("--resume", metavar="PATH",
                        help="checkpoint file, or run folder whose latest checkpoint to continue from")
    parser.add_argument("--output-dir", metavar="DIR", help="run folder (same as --set train.output_dir=DIR)")
    parser.add_argument("--full", action="store_true",
                        help="store every weight in checkpoints, not only the trained ones")
    parser.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    parser.set_defaults(func=run_train)


def _config_of_run(resume: str, overrides):
    """The configuration a resumed run was started with (its checkpoint holds it), plus overrides."""
    from stzsar.config import ConfigError, apply_overrides, config_from_dict, validate_config
    from stzsar.train.checkpoint import CheckpointError, locate_checkpoint, read_checkpoint

    try:
        path = locate_checkpoint(resume)
        stored = read_checkpoint(path).get("config")
    except CheckpointError as error:
        raise ConfigError(str(error)) from None
    if not stored:
        raise ConfigError(f"{path} records no configuration; pass --config")
    config = apply_overrides(config_from_dict(stored, source=str(path)), overrides)
    validate_config(config)
    return config


def run_train(args: argparse.Namespace) -> int:
    import yaml

    from stzsar.config import ConfigError, config_to_dict, load_config

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("stzsar").setLevel(logging.INFO)
    overrides = list(args.set)
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    if args.full:
        overrides.append("train.full_checkpoint=true")
    try:
        if args.resume and not args.config:
            config = _config_of_run(args.resume, overrides)
        else:
            config = load_config(args.config, overrides)
    except ConfigError as error:
        print(f"stzsar train: {error}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(config_to_dict(config), sort_keys=False), end="")
        return 0

    from stzsar.model import PretrainedWeightsUnavailable
    from stzsar.train.checkpoint import CheckpointError, CheckpointManager
    from stzsar.train.trainer import NonFiniteLossError, TrainingInterrupted, UnreadableDataError, train

    try:
        result = train(config, resume=args.resume)
    except TrainingInterrupted as stop:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"stzsar train: interrupted after step {stop.step} (epoch {stop.epoch}); "
                  f"checkpoint: {stop.checkpoint}", file=sys.stderr)
            if stop.checkpoint is not None:
                print(f"continue with: stzsar train --resume {stop.run_dir}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        # A second Ctrl-C (or one before training began): stop at once. Checkpoints are written to
        # a temporary file and renamed, so one cut short is discarded and the earlier ones are whole.
        if int(os.environ.get("RANK", "0")) == 0:
            run_dir = Path(config.train.output_dir)
            latest = CheckpointManager(run_dir / "checkpoints").latest()
            print(f"stzsar train: stopped at once (Ctrl-C); a checkpoint then being written was discarded; "
                  f"last complete checkpoint: {latest}", file=sys.stderr)
            if latest is not None:
                print(f"continue with: stzsar train --resume {run_dir}", file=sys.stderr)
        return 130
    except NonFiniteLossError as error:
        print(f"stzsar train: stopped: {error}", file=sys.stderr)
        return 3
    except UnreadableDataError as error:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"stzsar train: stopped: {error}", file=sys.stderr)
        return 1
    except (CheckpointError, PretrainedWeightsUnavailable, FileNotFoundError, ValueError) as error:
        print(f"stzsar train: {error}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:  # one summary, from rank 0
        print(f"trained {result.step} steps ({result.epoch} epochs); last checkpoint: {result.checkpoint}")
        if result.skipped:
            print(f"{len(result.skipped)} unreadable video(s) were skipped (listed in the checkpoint's extra "
                  f"and in the log)")
    return 0
