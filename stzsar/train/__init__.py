"""Training: ``train(config)`` (:mod:`stzsar.train.trainer`), checkpoints, data order, logging.

``stzsar.train.checkpoint`` (``save_checkpoint``, ``load_model_from_checkpoint``) is imported by
evaluation code; the rest is loaded on first use so that importing it stays cheap.
"""

from importlib import import_module

_LAZY = {
    "train": ("stzsar.train.trainer", "train"),
    "Trainer": ("stzsar.train.trainer", "Trainer"),
    "TrainResult": ("stzsar.train.trainer", "TrainResult"),
    "NonFiniteLossError": ("stzsar.train.trainer", "NonFiniteLossError"),
    "TrainingInterrupted": ("stzsar.train.trainer", "TrainingInterrupted"),
    "UnreadableDataError": ("stzsar.train.trainer", "UnreadableDataError"),
    "save_checkpoint": ("stzsar.train.checkpoint", "save_checkpoint"),
    "load_model_from_checkpoint": ("stzsar.train.checkpoint", "load_model_from_checkpoint"),
    "locate_checkpoint": ("stzsar.train.checkpoint", "locate_checkpoint"),
    "CheckpointError": ("stzsar.train.checkpoint", "CheckpointError"),
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'stzsar.train' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    return getattr(import_module(module_name), attr)


__all__ = list(_LAZY)
