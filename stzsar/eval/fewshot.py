"""Where the few-shot fine-tuning settings come from, and what they are.

One place, in this order (later wins):

1. the checkpoint's training configuration (``config`` in the checkpoint): optimiser, batch size,
   precision, augmentation (``data.hflip``, ``data.size``...), model settings; its dataset paths
   and its run length and location (``train.epochs``, ``train.max_steps``,
   ``train.output_dir``) describe the pre-training run and are not taken;
2. ``--config FILE``: the keys the file names;
3. ``--set section.key=value``;
4. the ``stzsar eval`` options that say how to run: ``--epochs`` (else ``eval.fewshot_epochs``),
   ``--seed`` (else ``train.seed``), ``--workers`` (``data.num_workers``), ``--num-frames``,
   ``--device``/``--precision`` when given.

A K-shot set smaller than one global batch (``train.batch_size``) is trained with the largest
batch it fills (a multiple of ranks x ``optim.grad_accum``), and the report says so.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, Optional

from stzsar.config import Config, ConfigError, config_from_dict, config_to_dict, load_config

logger = logging.getLogger(__name__)

SOURCE = "the checkpoint's training configuration, then --config, then --set, then the eval options"

#: Keys of the checkpoint's configuration that describe the pre-training run, not how to train.
_NOT_INHERITED = {
    "data": ("root", "train_list", "val_list", "labels", "split", "train_subset", "val_subset", "attributes",
             "shots"),
    "train": ("epochs", "max_steps", "output_dir"),
}

#: The settings printed and recorded in the report, as (section, key).
SHOWN = (("optim", "lr"), ("optim", "weight_decay"), ("optim", "warmup_epochs"), ("optim", "min_lr_ratio"),
         ("optim", "grad_clip"), ("optim", "grad_accum"), ("train", "batch_size"), ("train", "epochs"),
         ("train", "seed"), ("train", "precision"), ("train", "device"), ("data", "hflip"),
         ("data", "num_frames"), ("data", "num_workers"))


def checkpoint_training_config(meta: Dict[str, Any]) -> Config:
    """The checkpoint's training configuration, less the keys of :data:`_NOT_INHERITED`
    (the defaults when the checkpoint records none)."""
    stored = meta.get("config") if isinstance(meta, dict) else None
    if not isinstance(stored, dict):
        logger.warning("the checkpoint records no training configuration; few-shot fine-tuning starts "
                       "from the defaults of stzsar.config")
        return Config()
    values = {section: {k: v for k, v in (stored.get(section) or {}).items()
                        if k not in _NOT_INHERITED.get(section, ())}
              for section in stored if isinstance(stored.get(section), dict)}
    try:
        return config_from_dict(values, source="the checkpoint's training configuration")
    except ConfigError as error:
        raise ConfigError(f"{error} (the checkpoint was written by another stzsar version; give the "
                          "fine-tuning settings with --config)") from None


def finetune_config(meta: Dict[str, Any], config_path: Optional[str], overrides: Iterable[str], *,
                    epochs: Optional[int], seed: Optional[int], num_workers: Optional[int],
                    num_frames: int, device: Optional[str] = None, precision: Optional[str] = None) -> Config:
    """The fine-tuning configuration, resolved in the order of the module doc."""
    config = load_config(config_path, overrides, base=checkpoint_training_config(meta))
    user = load_config(config_path, overrides)  # to tell whether the user named eval.fewshot_epochs
    config.train.epochs = int(epochs if epochs is not None else user.eval.fewshot_epochs)
    config.train.max_steps = user.train.max_steps
    config.train.seed = int(seed if seed is not None else config.train.seed)
    if num_workers is not None:
        config.data.num_workers = int(num_workers)
    config.data.num_frames = int(num_frames)
    if device:
        config.train.device = device
    if precision:
        config.train.precision = precision
    config.data.shots = None  # the subset is cut once, by the few-shot protocol
    return config


def shown_settings(config: Config) -> Dict[str, Any]:
    """The settings of :data:`SHOWN`, for the log and the report."""
    plain = config_to_dict(config)
    return {f"{section}.{key}": plain[section][key] for section, key in SHOWN}


def fitted_batch_size(num_videos: int, batch_size: int, world_size: int = 1, grad_accum: int = 1) -> int:
    """``batch_size``, or for a smaller set the largest multiple of ``world_size * grad_accum``
    that it fills; ``ValueError`` when not even one such batch fits."""
    if num_videos >= batch_size:
        return batch_size
    step = world_size * grad_accum
    fitted = (num_videos // step) * step
    if fitted < step:
        raise ValueError(f"{num_videos} training videos cannot fill one batch of {step} "
                         f"({world_size} rank(s) x optim.grad_accum={grad_accum})")
    return fitted
