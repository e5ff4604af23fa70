"""stzsar: zero-shot video action recognition with CLIP, descriptive attributes and a fused
spatio-temporal interaction (STI) module.

Public entry points (imported lazily so that ``import stzsar`` stays cheap):
``stzsar.STIModule``, ``stzsar.build_model``, ``stzsar.ops``, ``stzsar.losses``.
"""

from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "STIModule": ("stzsar.sti", "STIModule"),
    "build_model": ("stzsar.model", "build_model"),
    "STZSARModel": ("stzsar.model", "STZSARModel"),
    "ops": ("stzsar.ops", None),
    "losses": ("stzsar.losses", None),
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'stzsar' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = import_module(module_name)
    return module if attr is None else getattr(module, attr)


__all__ = list(_LAZY) + ["__version__"]
