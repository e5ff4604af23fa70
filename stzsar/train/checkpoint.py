"""Checkpoints: written atomically, rebuilt from the model configuration they carry.

A checkpoint is one ``torch.save`` file holding a dictionary:

- ``format``/``version``: ``"stzsar-checkpoint"``, 1;
- ``model_config``: the :class:`stzsar.model.ModelConfig` that rebuilds the architecture;
- ``weights``: ``"full"`` or ``"trainable"``, and ``model``: the state dict;
- ``optimizer``, ``scheduler``, ``scaler``: their state dicts (``None`` when not given);
- ``step``, ``epoch``, ``config`` (the run's resolved :class:`stzsar.config.Config` as a dict),
  ``rng`` (Python, NumPy, torch and CUDA generator states, one entry per rank), ``extra``;
- ``versions``: stzsar and torch versions that wrote it;
- ``normalisation``: the model's input ``image_mean`` and ``image_std`` (what it was trained on;
  a model rebuilt without the pretrained weights that set them gets them back from here).

Everything in it is tensors and plain data (dicts, lists, str, numbers): it is read with
``torch.load(weights_only=True)``, whose unpickler builds nothing else, so a checkpoint from
elsewhere cannot run code when opened. A file that needs any other Python object is refused with
a :class:`CheckpointError` naming it. Checkpoints written before the RNG states were stored as
plain data hold NumPy's generator state as an array and torch's version as a ``TorchVersion``;
the NumPy array rebuild functions and that str subclass are the only globals allowed beyond plain
data.

Which weights are stored: only the trained ones (``model.trainable_state_dict()``: the upper
ViT blocks, the STI projections, the temporal layers) when everything else is reproducible from
``model_config``, i.e. when the model was built from a pretrained CLIP checkpoint
(``model_config.pretrained`` names an open_clip tag or a file). A model built with random
weights (``pretrained=None``) is not reproducible from its configuration, so its checkpoints
hold every weight, as does ``full=True``. Loading a trainable-only checkpoint rebuilds the model
from the same pretrained CLIP weights first (``pretrained=`` of
:func:`load_model_from_checkpoint` points at a local copy where the original tag or path cannot
be reached).

Writes go to a temporary file in the same folder, are flushed to disk, then renamed over the
target with :func:`os.replace`, so a reader never sees half a file, even if the writer is killed.

Every reader takes a file or a folder (a run folder or its ``checkpoints/``: its latest
checkpoint), by one rule: :func:`locate_checkpoint`.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import random
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

PathLike = Union[str, Path]

FORMAT = "stzsar-checkpoint"
VERSION = 1

_KEEP = object()  # "use the pretrained reference stored in the checkpoint"


class CheckpointError(RuntimeError):
    """A file that is not a usable stzsar checkpoint; the message names the file and the reason."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model under DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def stores_full_weights(model: nn.Module, full: bool = False) -> bool:
    """Whether a checkpoint of ``model`` must hold every weight (see the module docstring)."""
    config = getattr(unwrap_model(model), "config", None)
    return bool(full) or config is None or getattr(config, "pretrained", None) in (None, "")


def _clean_state_dict(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    # Compiled submodules (nn.Module.compile keeps the names, torch.compile(m) does not).
    return {k.replace("_orig_mod.", ""): v.detach().cpu() for k, v in state.items()}


def capture_rng_state() -> Dict[str, Any]:
    """The states of every random generator a training step may use in this process, as tensors
    and plain data (see the module docstring)."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states only when CUDA is in use)."""
    random.setstate(_as_python_state(state["python"]))
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        keys = np.asarray(numpy_state["keys"].cpu().numpy(), dtype=np.uint32)
        numpy_state = (
            numpy_state["kind"], keys, numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]
        )
    np.random.set_state(numpy_state)  # a tuple with an array in checkpoints of the first layout
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def _as_python_state(state):
    # torch.load gives lists where random.getstate() had tuples.
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_checkpoint(
    path: PathLike,
    model: nn.Module,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Optional[Any] = None,
    scaler: Optional[Any] = None,
    step: int = 0,
    epoch: int = 0,
    config: Optional[Any] = None,
    full: bool = False,
    extra: Optional[Dict[str, Any]] = None,
    rng: Optional[List[Dict[str, Any]]] = None,
) -> Path:
    """Write a checkpoint of ``model`` (and the training state given) atomically to ``path``.

    Args:
        model: an :class:`stzsar.model.STZSARModel` (DDP/compile wrappers are unwrapped).
        optimizer, scheduler, scaler: saved through their ``state_dict()`` when given.
        step, epoch: training position (optimizer steps done; epoch in progress).
        config: the run's :class:`stzsar.config.Config` (or a plain dict).
        full: store every weight even when the frozen ones are reproducible.
        extra: any picklable additions (class names, data position, ...).
        rng: per-rank generator states (default: this process's, as a one-element list).
    """
    from stzsar import __version__

    path = Path(path)
    plain = unwrap_model(model)
    model_config = getattr(plain, "config", None)
    if model_config is None:
        raise CheckpointError(f"{path}: the model has no .config to rebuild it from (not an STZSARModel?)")
    store_full = stores_full_weights(plain, full)
    weights = plain.state_dict() if store_full else plain.trainable_state_dict()
    if config is not None and dataclasses.is_dataclass(config):
        from stzsar.config import config_to_dict

        config = config_to_dict(config)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": dataclasses.asdict(model_config),
        "weights": "full" if store_full else "trainable",
        "model": _clean_state_dict(weights),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "step": int(step),
        "epoch": int(epoch),
        "config": config,
        "rng": rng if rng is not None else [capture_rng_state()],
        "extra": dict(extra or {}),
        "versions": {"stzsar": str(__version__), "torch": str(torch.__version__)},
    }
    normalisation = model_normalisation(plain)
    if normalisation is not None:
        payload["normalisation"] = normalisation
    _atomic_torch_save(payload, path)
    return path


def read_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """The raw checkpoint dictionary, checked for the stzsar format (``path``: a file or a run
    folder, see :func:`locate_checkpoint`)."""
    path = locate_checkpoint(path)
    try:
        # Tensors and plain data only; NumPy's array rebuild for the RNG state of older files.
        with torch.serialization.safe_globals(_first_layout_globals()):
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = _unsafe_globals(path)
        raise CheckpointError(
            f"{path}: refused: the file holds Python objects beyond tensors and plain data"
            f"{' (' + ', '.join(unsafe) + ')' if unsafe else ''}, which could run code when unpickled. "
            "stzsar checkpoints never need them; if you trust the file's author, convert it with "
            "torch.load(..., weights_only=False) yourself and save its tensors and plain data again"
        ) from None
    except Exception as error:
        raise CheckpointError(f"{path}: cannot be read as a torch checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an stzsar checkpoint (no format={FORMAT!r} entry)")
    if payload.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {payload['version']} is newer than this stzsar reads ({VERSION})"
        )
    return payload


def _first_layout_globals() -> list:
    """What checkpoints of the first layout need beyond plain data: a NumPy array (ndarray, dtype
    and the rebuild function; the contents are data) and torch's version string (a str)."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32)),
            torch.torch_version.TorchVersion]


def _unsafe_globals(path: Path) -> List[str]:
    try:
        return [name for name in torch.serialization.get_unsafe_globals_in_checkpoint(path)]
    except Exception:  # not a zip checkpoint: the error message stands without the names
        return []


#: ModelConfig fields that decide which weights exist and their shapes.
ARCHITECTURE_FIELDS = ("name", "temporal_layers", "frozen_blocks", "image_size")


def architecture_mismatch(stored: Optional[Dict[str, Any]], model_config: Any) -> List[str]:
    """``"model.<field>=<checkpoint's> (checkpoint) vs <model's>"`` for each architecture field in
    which a checkpoint's ``model_config`` and a model's configuration differ. Unset optional
    fields (``None``: the model's default) are compared only when both are set."""
    if not stored or model_config is None:
        return []
    found = []
    for name in ARCHITECTURE_FIELDS:
        theirs, ours = stored.get(name), getattr(model_config, name, None)
        if name != "name" and (theirs is None or ours is None):
            continue
        if theirs != ours:
            found.append(f"model.{name}={theirs} in the checkpoint, {ours} here")
    return found


def model_normalisation(model: nn.Module) -> Optional[Dict[str, List[float]]]:
    """``{"image_mean": [r, g, b], "image_std": [r, g, b]}`` of ``model``'s input, or ``None`` for a
    model that has none (not an :class:`stzsar.model.STZSARModel`)."""
    mean, std = getattr(model, "image_mean", None), getattr(model, "image_std", None)
    if mean is None or std is None:
        return None
    return {"image_mean": [float(v) for v in mean], "image_std": [float(v) for v in std]}


def restore_normalisation(model: nn.Module, payload: Dict[str, Any], source: str = "<checkpoint>") -> None:
    """Give ``model`` the input normalisation the checkpoint was trained with. The model reads it
    from its image tower (``video.visual.image_mean``/``image_std``, where open_clip records the
    values of the pretrained weights), which a rebuild with random weights leaves at OpenAI CLIP's
    defaults. Checkpoints written before it was stored leave the model as built."""
    stored = payload.get("normalisation")
    if not stored:
        return
    mean, std = stored.get("image_mean"), stored.get("image_std")
    if (not isinstance(mean, (list, tuple)) or not isinstance(std, (list, tuple)) or len(mean) != 3
            or len(std) != 3 or min(float(v) for v in std) <= 0):
        raise CheckpointError(f"{source}: the stored normalisation is not three means and three positive "
                              f"standard deviations: {stored}")
    visual = unwrap_model(model).video.visual
    visual.image_mean = tuple(float(v) for v in mean)
    visual.image_std = tuple(float(v) for v in std)


def load_weights(model: nn.Module, payload: Dict[str, Any], source: str = "<checkpoint>") -> None:
    """Load the checkpoint's weights into ``model``, checking that nothing is missing or left over.

    A ``"trainable"`` checkpoint must cover exactly the model's trainable parameters; a ``"full"``
    one every entry of its state dict.
    """
    plain = unwrap_model(model)
    state = payload["model"]
    own = plain.state_dict()
    unexpected = sorted(set(state) - set(own))
    if payload.get("weights") == "full":
        missing = sorted(set(own) - set(state))
    else:
        trainable = {name for name, p in plain.named_parameters() if p.requires_grad}
        missing = sorted(trainable - set(state))
    # Another model (size, layers) is the usual cause of weights that do not fit: say that first.
    differences = architecture_mismatch(payload.get("model_config"), getattr(plain, "config", None))
    cause = f"another model ({'; '.join(differences)}): " if differences else ""
    if unexpected or missing:
        raise CheckpointError(
            f"{source}: {cause}weights do not fit the model: missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise CheckpointError(
                f"{source}: {cause}{key} has shape {tuple(value.shape)}, the model {tuple(own[key].shape)}"
            )
    plain.load_state_dict(state, strict=payload.get("weights") == "full")


def load_model_from_checkpoint(
    path: PathLike,
    device: Union[str, torch.device] = "cpu",
    pretrained: Any = _KEEP,
):
    """Rebuild the model a checkpoint was saved from and load its weights.

    Args:
        path: a checkpoint written by :func:`save_checkpoint`, or a run folder (its latest
            checkpoint; see :func:`locate_checkpoint`).
        device: where the model goes.
        pretrained: for trainable-only checkpoints, where the CLIP weights come from (an open_clip
            tag or a local file) when the stored reference cannot be used here.

    Returns:
        ``(model, meta)``: the :class:`stzsar.model.STZSARModel` in eval mode and the checkpoint's
        metadata (``step``, ``epoch``, ``config``, ``extra``, ``model_config``, ``weights``,
        ``versions``, ``normalisation`` where stored; no tensors of weights or optimizer state).
    """
    from stzsar.model import ModelConfig, build_model_from_config, upgrade_model_keys

    path = locate_checkpoint(path)
    payload = read_checkpoint(path)
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    stored = upgrade_model_keys(payload["model_config"])
    unknown = sorted(set(stored) - known)
    if unknown:
        raise CheckpointError(f"{path}: model_config has keys this stzsar does not know: {unknown}")
    model_config = ModelConfig(**stored)
    if payload["weights"] == "full":
        # Every weight is in the file: build with random weights instead of fetching CLIP's.
        build_config = dataclasses.replace(model_config, pretrained=None)
    elif pretrained is not _KEEP:
        build_config = dataclasses.replace(model_config, pretrained=pretrained)
    else:
        build_config = model_config
    model = build_model_from_config(build_config, device="cpu")
    model.config = model_config if pretrained is _KEEP else build_config
    load_weights(model, payload, source=str(path))
    restore_normalisation(model, payload, source=str(path))
    model = model.to(device).eval()
    meta = {k: v for k, v in payload.items() if k not in ("model", "optimizer", "scheduler", "scaler", "rng")}
    meta["path"] = str(path)
    return model, meta


# --------------------------------------------------------------------------------------------
# A folder of checkpoints, keeping the last K


_STEP_NAME = re.compile(r"^step_(\d+)\.pt$")


class CheckpointManager:
    """``<folder>/step_<step>.pt`` files plus a ``latest`` pointer; keeps the newest ``keep_last``.

    Checkpoints saved under other names (e.g. ``nan_step_<n>.pt``) are never deleted.
    """

    def __init__(self, folder: PathLike, keep_last: int = 3):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.folder = Path(folder)
        self.keep_last = keep_last

    def path_for(self, step: int) -> Path:
        return self.folder / f"step_{step:08d}.pt"

    def list(self) -> List[Tuple[int, Path]]:
        if not self.folder.is_dir():
            return []
        found = []
        for child in self.folder.iterdir():
            match = _STEP_NAME.match(child.name)
            if match:
                found.append((int(match.group(1)), child))
        return sorted(found)

    def latest(self) -> Optional[Path]:
        pointer = self.folder / "latest"
        if pointer.is_file():
            target = self.folder / pointer.read_text().strip()
            if target.is_file():
                return target
        found = self.list()
        return found[-1][1] if found else None

    def save(self, step: int, **kwargs) -> Path:
        """:func:`save_checkpoint` to ``step_<step>.pt``, update ``latest``, prune old ones."""
        path = save_checkpoint(self.path_for(step), step=step, **kwargs)
        pointer = self.folder / "latest"
        tmp = pointer.with_name(f".latest.tmp{os.getpid()}")
        tmp.write_text(path.name + "\n")
        os.replace(tmp, pointer)
        for _, old in self.list()[: -self.keep_last]:
            old.unlink(missing_ok=True)
        return path


def locate_checkpoint(checkpoint: PathLike) -> Path:
    """The checkpoint file ``checkpoint`` names: a file, or a folder's latest checkpoint.

    The one rule for every place a checkpoint is read (``--checkpoint`` of ``stzsar eval``,
    ``predict`` and ``explain``, ``stzsar train --resume``, :func:`read_checkpoint`,
    :func:`load_model_from_checkpoint`): a file is itself; a folder is a run folder (its
    ``checkpoints/``) or a checkpoints folder, whose ``latest`` pointer, else its highest
    ``step_*.pt``, is the checkpoint. Errors name the path exactly as given.
    """
    given = os.fspath(checkpoint)
    path = Path(given)
    if path.is_file():
        return path
    if path.is_dir():
        for folder in (path / "checkpoints", path):
            latest = CheckpointManager(folder).latest() if folder.is_dir() else None
            if latest is not None:
                return latest
        raise CheckpointError(
            f"no checkpoint in the folder {given}: expected step_*.pt files in it or in its "
            f"checkpoints/ folder (as stzsar train writes them), or give a checkpoint file"
        )
    raise CheckpointError(f"checkpoint not found: {given}")
