"""stzsar: zero-shot video action recognition with CLIP, descriptive attributes and a fused
spatio-temporal interaction (STI) module.

The public names (``stzsar.__all__``; each imported on first use, so that ``import stzsar`` stays
cheap and ``stzsar --help`` does not load torch):

- ``build_model``, ``STZSARModel``, ``ModelConfig``, ``PretrainedWeightsUnavailable``: the model;
- ``video_input``: a video file or frames in memory as the model's input;
- ``load_model_from_checkpoint``: a model trained with ``stzsar train``;
- ``ClassBank``: encoded class texts (``model.encode_classes``);
- ``STIModule``: the spatio-temporal interaction module alone;
- ``ClipSpec``: frames, size, views and normalisation of a clip;
- ``Config``, ``load_config``: training/evaluation configuration;
- ``ops``, ``losses``: the fused operators, the training loss.
"""

from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "build_model": ("stzsar.model", "build_model"),
    "STZSARModel": ("stzsar.model", "STZSARModel"),
    "ModelConfig": ("stzsar.model", "ModelConfig"),
    "PretrainedWeightsUnavailable": ("stzsar.model", "PretrainedWeightsUnavailable"),
    "video_input": ("stzsar.inference", "video_input"),
    "load_model_from_checkpoint": ("stzsar.train.checkpoint", "load_model_from_checkpoint"),
    "ClassBank": ("stzsar.text", "ClassBank"),
    "STIModule": ("stzsar.sti", "STIModule"),
    "ClipSpec": ("stzsar.data.spec", "ClipSpec"),
    "Config": ("stzsar.config", "Config"),
    "load_config": ("stzsar.config", "load_config"),
    "ops": ("stzsar.ops", None),
    "losses": ("stzsar.losses", None),
}

__all__ = list(_LAZY) + ["__version__"]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'stzsar' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    # The lazy names are not module globals until first used; list them anyway.
    return sorted(set(globals()) - {"import_module"} | set(__all__))
