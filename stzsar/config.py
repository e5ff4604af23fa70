"""One typed configuration for training, evaluation and the demo.

A :class:`Config` has five sections (``model``, ``data``, ``optim``, ``train``, ``eval``), each a
dataclass whose defaults are the paper's settings (docs/method.md section 5: CLIP ViT-B/16, 16 frames,
AdamW with lr 5e-5 and weight decay 0.05, 30 epochs, batch 64, 8 attributes).

Sources, later ones winning:

1. the defaults below;
2. a YAML file (:func:`load_config`): a path, or the name of a configuration that ships with the
   package (``stzsar/configs/``: ``k400_vitb16_f16``, ``k400_vitl14_f8``, ``fewshot_ucf101``,
   ``fewshot_hmdb51``, ``demo``; :func:`builtin_configs`). It may name a ``base:`` YAML file
   (relative to itself, or a built-in name) whose values it overrides;
3. command-line overrides ``section.key=value`` (``--set optim.lr=1e-4``), parsed as YAML
   scalars/lists and converted to the field's type (:func:`apply_overrides`).

Unknown sections or keys are errors that name the key and its source, and list what exists,
so a typo never falls back silently to a default. :func:`save_config` writes the resolved
configuration as YAML; the trainer saves it next to every run (``config.yaml``).

Usage::

    config = load_config("k400_vitb16_f16", ["optim.lr=1e-4", "train.epochs=10"])
    config.optim.lr          # 1e-4
    save_config(config, "runs/x/config.yaml")
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.resources
import os
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

from stzsar.model import ModelConfig, upgrade_model_keys
from stzsar.text.prompts import DEFAULT_TEMPLATE

PathLike = Union[str, Path]


class ConfigError(ValueError):
    """A configuration value or key that cannot be used; the message names the key and the source."""


# --------------------------------------------------------------------------------------------
# Sections


@dataclass
class ModelSection(ModelConfig):
    """The model (:class:`stzsar.model.ModelConfig`, which checkpoints store, with
    the public CLIP weights as the default for training).

    Attributes:
        name: open_clip architecture (``ViT-B-16``, ``ViT-L-14``) or a ``stzsar-*`` tiny config.
        pretrained: open_clip pretrained tag (``openai``) or a local checkpoint path; ``null``
            for random weights (then checkpoints hold every weight, nothing being reproducible).
        frozen_blocks: lower ViT blocks kept frozen (``null``: the first half, as in the paper).
        temporal_layers: layers of the optional temporal transformer over frame embeddings.
        temperature: tau of the STI temporal softmax.
        normalize: L2-normalise the STI inputs.
        template: prompt template; ``{}`` receives the class name and its attributes.
        word_tokens: which prompt tokens count as words in the STI matches:
            ``class_and_attributes`` (default: the template's words and punctuation masked) or
            ``sentence`` (every token, the paper's literal reading).
        backend: backend of the fused STI ops (``auto``, ``torch``, ``cpu``, ``cuda``, ``triton``).
        image_size: force the image size of the ViT (``null``: the architecture's).
        spatial_interaction: the STI's spatial step (``false``: ``S_sp = 1``).
        temporal_interaction: the STI's temporal step (``false``: the video is
            ``sum_t S_sp[t] v_t``; with both off, the mean of the frames).
    """

    pretrained: Optional[str] = "openai"


def default_num_workers(limit: int = 8) -> int:
    """Decoding workers a rank starts by default: the cores this process may run on, at most ``limit``
    (more workers than cores only add contention, and torch warns about it)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(limit, cores))


@dataclass
class DataSection:
    """Where videos and class texts come from and how clips are made.

    Attributes:
        format: split format understood by :mod:`stzsar.data` (``bike``, ``ucf101``, ``hmdb51``,
            ``kinetics``, ...).
        root: folder holding the videos.
        train_list, val_list: split files (their meaning depends on ``format``).
        labels: class list (one name a line, ``id,name`` CSV, ``classInd.txt`` or JSON).
        split: split number for formats with several (UCF-101/HMDB-51 1..3).
        train_subset, val_subset: which part of a multi-part split file to read (UCF-101/HMDB-51
            ``train``/``test``; the Kinetics CSV ``split`` column); ignored by list formats.
        attributes: attribute file (``{class: [keywords]}`` JSON from ``stzsar attributes``);
            ``null``: class names alone.
        num_attributes: attributes kept per class (``Na``).
        num_frames: ``T`` frames per clip.
        size: crop side fed to the ViT (``null``: the model's image size).
        short_side: short side before cropping (``null``: the data module's default).
        hflip: probability of a horizontal flip when training.
        decoder: ``pyav`` (CPU workers), ``dali`` (GPU) or ``auto``.
        num_workers: DataLoader worker processes per rank (default: the CPU cores this process may
            use, at most 8).
        strict: raise on a bad video instead of skipping it (skips are logged and counted).
        max_unreadable: share of the training split that may be unreadable (skipped) before
            training stops; a micro-batch with no readable video stops it regardless.
        shots: videos per class for a few-shot subset (``null``: all).
    """

    format: str = "bike"
    root: Optional[str] = None
    train_list: Optional[str] = None
    val_list: Optional[str] = None
    labels: Optional[str] = None
    split: int = 1
    train_subset: Optional[str] = "train"
    val_subset: Optional[str] = None
    attributes: Optional[str] = None
    num_attributes: int = 8
    num_frames: int = 16
    size: Optional[int] = None
    short_side: Optional[int] = None
    hflip: float = 0.5
    decoder: str = "auto"
    num_workers: int = field(default_factory=lambda: default_num_workers())
    strict: bool = False
    max_unreadable: float = 0.01
    shots: Optional[int] = None


@dataclass
class OptimSection:
    """AdamW with a cosine schedule after a linear warm-up.

    Attributes:
        lr: peak learning rate (after warm-up).
        weight_decay: AdamW decoupled weight decay; never applied to norms, biases, embeddings.
        betas, eps: AdamW moments and epsilon.
        warmup_epochs: linear warm-up length (fractions allowed), from ``lr * warmup_start``.
        warmup_start: learning-rate factor at step 0.
        min_lr_ratio: the cosine ends at ``lr * min_lr_ratio``.
        grad_clip: clip the global gradient norm to this (``null`` or 0: no clipping).
        grad_accum: micro-batches accumulated per optimizer step.
    """

    lr: float = 5e-5
    weight_decay: float = 0.05
    betas: Tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_epochs: float = 5.0
    warmup_start: float = 0.0
    min_lr_ratio: float = 0.0
    grad_clip: Optional[float] = 1.0
    grad_accum: int = 1


@dataclass
class TrainSection:
    """The training loop.

    Attributes:
        epochs: passes over the training set.
        batch_size: videos per optimizer step over all ranks and accumulation steps
            (per-rank micro-batch = ``batch_size / (world_size * grad_accum)``, which must divide).
        max_steps: stop after this many optimizer steps (``null``: ``epochs`` decide).
        output_dir: run folder (config, checkpoints, logs).
        seed: seeds the data order, the clip sampling and the initialisation.
        deterministic: ask PyTorch for deterministic algorithms (slower; for exact reruns).
        device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:1``...
        precision: ``auto`` (bf16 autocast on CUDA when supported, else fp32), ``fp32``,
            ``bf16`` or ``fp16`` (with a gradient scaler).
        compile: ``torch.compile`` the video encoder and the STI head: ``auto`` (on for CUDA
            devices, off on the CPU), ``true`` or ``false``.
        grad_checkpointing: activation checkpointing in the ViT blocks (less memory, more time).
        checkpoint_every: save a checkpoint every N optimizer steps (0: only at epoch ends).
        keep_last: periodic/epoch checkpoints kept (older ones are deleted).
        full_checkpoint: store every weight, not only the trained ones.
        log_every: optimizer steps between scalar log lines (TensorBoard, JSONL).
        tensorboard: also write TensorBoard event files (when ``tensorboard`` is installed).
        progress: show a tqdm progress bar (rank 0).
    """

    epochs: int = 30
    batch_size: int = 64
    max_steps: Optional[int] = None
    output_dir: str = "runs/train"
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    precision: str = "auto"
    compile: Union[bool, str] = "auto"
    grad_checkpointing: bool = False
    checkpoint_every: int = 1000
    keep_last: int = 3
    full_checkpoint: bool = False
    log_every: int = 10
    tensorboard: bool = True
    progress: bool = True


@dataclass
class EvalSection:
    """Evaluation settings (read by ``stzsar eval``; the trainer itself does not validate).

    Attributes:
        protocol: ``zero-shot``, ``few-shot`` or ``supervised``.
        splits: split numbers evaluated (zero-shot protocols report mean +- std over them).
        shots: K values of the few-shot protocol.
        fewshot_epochs: fine-tuning epochs per few-shot run.
        num_clips, num_crops: temporal x spatial views per test video.
        batch_size: videos per evaluation batch per rank.
        topk: the top-k accuracies reported.
    """

    protocol: str = "zero-shot"
    splits: List[int] = field(default_factory=lambda: [1, 2, 3])
    shots: List[int] = field(default_factory=lambda: [2, 4, 8, 16])
    fewshot_epochs: int = 50
    num_clips: int = 1
    num_crops: int = 1
    batch_size: int = 16
    topk: List[int] = field(default_factory=lambda: [1, 5])


@dataclass
class Config:
    """The whole configuration. ``Config()`` holds the paper's defaults."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)

    def to_dict(self) -> Dict[str, Any]:
        return config_to_dict(self)

    def model_config(self):
        """The :class:`stzsar.model.ModelConfig` of the ``model`` section."""
        from stzsar.model import ModelConfig

        return ModelConfig(**dataclasses.asdict(self.model))


# --------------------------------------------------------------------------------------------
# Conversion


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    """``value`` as type ``tp`` (``int``, ``float``, ``bool``, ``str``, ``Optional``, ``List``,
    ``Tuple``), or a :class:`ConfigError` naming ``key`` and ``source``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    def fail(reason: str = "") -> ConfigError:
        return ConfigError(
            f"{source}: {key} = {value!r} is not a valid {_type_name(tp)}{': ' + reason if reason else ''}"
        )

    if origin is Union:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "~")):
            if type(None) in args:
                return None
            raise fail("null is not allowed here")
        others = [a for a in args if a is not type(None)]
        errors = []
        for option in others:
            try:
                return _convert(value, option, key, source)
            except ConfigError as error:
                errors.append(str(error))
        raise fail()
    if value is None and tp is not Any:
        raise fail("null is not allowed here")
    if origin in (list, List, tuple, Tuple, Sequence):
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = yaml.safe_load(text)
                except yaml.YAMLError:
                    raise fail("not a valid YAML list") from None
            else:  # "2,4,8" or a single value
                value = [part.strip() for part in text.split(",") if part.strip()]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise fail("expected a list")
        if origin in (tuple, Tuple):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_convert(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value))
            if args and len(args) != len(value):
                raise fail(f"expected {len(args)} values, got {len(value)}")
            return tuple(_convert(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args or [Any] * len(value))))
        item = args[0] if args else Any
        return [_convert(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1"):
            return True
        if isinstance(value, str) and value.strip().lower() in ("false", "no", "off", "0"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise fail("expected true or false")
    if tp is int:
        if isinstance(value, bool):
            raise fail("expected an integer, got a boolean")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                try:
                    number = float(value)
                except ValueError:
                    raise fail("expected an integer") from None
                if number.is_integer():
                    return int(number)
        raise fail("expected an integer")
    if tp is float:
        if isinstance(value, bool):
            raise fail("expected a number, got a boolean")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())  # YAML reads "1e-4" as a string; float() does not
            except ValueError:
                raise fail("expected a number") from None
        raise fail("expected a number")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise fail("expected a string")
    raise fail(f"unsupported field type {tp}")  # pragma: no cover - only for new field types


def _section_types(cls) -> Dict[str, Any]:
    return typing.get_type_hints(cls)


def _update_section(section: Any, values: Mapping[str, Any], prefix: str, source: str) -> None:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: {prefix} must be a mapping of keys to values, got {values!r}")
    hints = _section_types(type(section))
    names = [f.name for f in fields(section)]
    for key, value in values.items():
        if key not in names:
            raise ConfigError(
                f"{source}: unknown key {prefix}.{key}; {prefix} has: {', '.join(names)}"
            )
        setattr(section, key, _convert(value, hints[key], f"{prefix}.{key}", source))


def config_from_dict(values: Mapping[str, Any], base: Optional[Config] = None, source: str = "<dict>") -> Config:
    """A :class:`Config` from nested mappings (unknown sections or keys are errors)."""
    # A deep copy, so the base stays untouched.
    config = copy.deepcopy(base) if base is not None else Config()
    sections = [f.name for f in fields(Config)]
    for name, section_values in (values or {}).items():
        if name not in sections:
            raise ConfigError(f"{source}: unknown section {name!r}; sections: {', '.join(sections)}")
        if section_values is None:
            continue
        if name == "model" and isinstance(section_values, Mapping):
            section_values = upgrade_model_keys(section_values)  # checkpoints of earlier releases
        _update_section(getattr(config, name), section_values, name, source)
    return config


def config_to_dict(config: Config) -> Dict[str, Any]:
    """Nested plain dictionaries (tuples as lists), ready for YAML or JSON."""

    def plain(value):
        if is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(config)


def builtin_configs() -> Dict[str, Path]:
    """The training configurations that ship with the package (``stzsar/configs/*.yaml``), by
    name: the file name without ``.yaml``."""
    folder = Path(str(importlib.resources.files("stzsar").joinpath("configs")))
    return {path.stem: path for path in sorted(folder.glob("*.yaml"))}


def _builtin_config(value: PathLike) -> Optional[Path]:
    """The built-in configuration ``value`` names (case-insensitive, ``.yaml`` optional), if any."""
    name = str(value).strip()
    for suffix in (".yaml", ".yml"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    by_name = {key.lower(): path for key, path in builtin_configs().items()}
    return by_name.get(name.lower()) if "/" not in name and os.sep not in name else None


def resolve_config(value: PathLike) -> Path:
    """The YAML file behind a ``--config`` value: the path itself when that file exists (a path
    always wins), else the built-in configuration of that name; otherwise a :class:`ConfigError`
    that lists the built-in names."""
    path = Path(value)
    if path.is_file():
        return path
    builtin = _builtin_config(value)
    if builtin is not None:
        return builtin
    what = "is a folder, not a YAML file" if path.is_dir() else "is neither a file nor a built-in configuration"
    raise ConfigError(f"config file not found: {str(value)!r} {what}; built-in configurations (by name): "
                      f"{', '.join(builtin_configs()) or 'none'} (`stzsar resources list`)")


def _read_yaml(path: Path, seen: Tuple[Path, ...] = ()) -> Dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: circular 'base:' chain {' -> '.join(map(str, seen + (path,)))}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(values).__name__}")
    base = values.pop("base", None)
    if base is None:
        return values
    target = (path.parent / base) if not os.path.isabs(base) else Path(base)
    if not target.is_file():
        target = _builtin_config(base) or target  # a built-in name works as a base too
    base_values = _read_yaml(target, seen + (path.resolve(),))
    return _merge(base_values, values)


def _merge(base: Dict[str, Any], override: Dict[str, Any]) -> Dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> Tuple[List[str], Any]:
    """``"optim.lr=1e-4"`` -> ``(["optim", "lr"], "1e-4")`` (the value is converted later)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. optim.lr=1e-4)")
    key, _, value = text.partition("=")
    path = [part.strip() for part in key.strip().split(".")]
    if len(path) != 2 or not all(path):
        raise ConfigError(f"override {text!r}: the key must be section.key (e.g. optim.lr), got {key!r}")
    value = value.strip()
    try:
        parsed = yaml.safe_load(value) if value else ""
    except yaml.YAMLError:
        parsed = value  # a plain string YAML cannot parse (e.g. "a: b"): keep it as it was typed
    if isinstance(parsed, (dict,)):
        parsed = value
    return path, parsed


def apply_overrides(config: Config, overrides: Iterable[str], source: str = "--set") -> Config:
    """A copy of ``config`` with ``section.key=value`` overrides applied (converted to the field type)."""
    values: Dict[str, Dict[str, Any]] = {}
    for text in overrides or ():
        (section, key), value = parse_override(text)
        values.setdefault(section, {})[key] = value
    return config_from_dict(values, base=config, source=source)


def load_config(path: Optional[PathLike] = None, overrides: Iterable[str] = (),
                base: Optional[Config] = None) -> Config:
    """``base`` (default: the defaults), then the YAML file ``path`` (if any: a file, or the name of
    a built-in configuration, see :func:`resolve_config`), then the ``overrides``; then validated.
    The file and the overrides change only the keys they name."""
    config = copy.deepcopy(base) if base is not None else Config()
    if path is not None:
        path = resolve_config(path)
        config = config_from_dict(_read_yaml(path), base=config, source=str(path))
    config = apply_overrides(config, overrides)
    validate_config(config)
    return config


def save_config(config: Config, path: PathLike) -> Path:
    """Write the resolved configuration as YAML (atomically: temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(
        "# Resolved stzsar configuration (defaults + file + overrides).\n"
        + yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=None)
    )
    os.replace(tmp, path)
    return path


_CHOICES = {
    ("train", "precision"): ("auto", "fp32", "bf16", "fp16"),
    ("data", "decoder"): ("auto", "pyav", "dali", "torchcodec"),
    ("eval", "protocol"): ("zero-shot", "few-shot", "supervised"),
    ("model", "word_tokens"): ("class_and_attributes", "sentence"),
}


def validate_config(config: Config) -> None:
    """Range and choice checks that the types alone do not catch."""
    for (section, key), choices in _CHOICES.items():
        value = getattr(getattr(config, section), key)
        if value not in choices:
            raise ConfigError(f"{section}.{key} = {value!r}; expected one of {', '.join(choices)}")
    positive = [("optim", "lr"), ("train", "epochs"), ("train", "batch_size"), ("optim", "grad_accum"),
                ("data", "num_frames"), ("train", "keep_last"), ("train", "log_every"),
                ("data", "num_attributes"), ("eval", "batch_size"), ("eval", "num_clips")]
    for section, key in positive:
        value = getattr(getattr(config, section), key)
        if value <= 0:
            raise ConfigError(f"{section}.{key} must be positive, got {value}")
    non_negative = [("optim", "weight_decay"), ("optim", "warmup_epochs"), ("train", "checkpoint_every"),
                    ("data", "num_workers"), ("model", "temporal_layers")]
    for section, key in non_negative:
        value = getattr(getattr(config, section), key)
        if value < 0:
            raise ConfigError(f"{section}.{key} must be >= 0, got {value}")
    if not (isinstance(config.train.compile, bool) or config.train.compile == "auto"):
        raise ConfigError(f"train.compile = {config.train.compile!r}; expected true or false, or auto")
    if config.train.max_steps is not None and config.train.max_steps <= 0:
        raise ConfigError(f"train.max_steps must be positive or null, got {config.train.max_steps}")
    if not 0.0 <= config.data.hflip <= 1.0:
        raise ConfigError(f"data.hflip is a probability, got {config.data.hflip}")
    if not 0.0 <= config.data.max_unreadable <= 1.0:
        raise ConfigError(f"data.max_unreadable is a share of the split in [0, 1], got {config.data.max_unreadable}")
    if config.eval.num_crops not in (1, 3):
        raise ConfigError(f"eval.num_crops must be 1 or 3, got {config.eval.num_crops}")
    if "{}" not in config.model.template:
        raise ConfigError(f"model.template must contain '{{}}' for the class text, got {config.model.template!r}")
    if not 0.0 <= config.optim.min_lr_ratio <= 1.0 or not 0.0 <= config.optim.warmup_start <= 1.0:
        raise ConfigError("optim.min_lr_ratio and optim.warmup_start must be in [0, 1]")
