"""The training loop: ``train(config)`` on one CPU, one GPU, or many GPUs/nodes with ``torchrun``.

What one optimizer step does (docs/method.md section 5):

1. ``grad_accum`` micro-batches; each is a global batch of ``batch_size / grad_accum`` videos
   split over the ranks (:mod:`stzsar.train.sampling`), scored against the prompts of all its
   labels and reduced to the symmetric multi-positive loss (:mod:`stzsar.train.loss`);
2. the gradients of the micro-batches add up (DDP synchronises on the last one);
3. the global gradient norm is clipped, AdamW steps, the cosine schedule advances.

The text tower is frozen, so the class bank of the training classes is encoded once
(``model.encode_classes``) and each batch selects its prompts from it.

Checkpoints (every ``train.checkpoint_every`` steps, at each epoch end, and at the end) hold the
model, optimizer, scheduler, scaler, position (epoch, micro-batches consumed) and every rank's
RNG states; with the seeded data order, ``resume=`` continues a killed run exactly where it
stopped. A non-finite loss or gradient saves ``checkpoints/nan_step_<n>.pt`` and stops the run
with :class:`NonFiniteLossError` naming the step, the micro-batch and its videos.

Python use (e.g. the few-shot protocol)::

    from stzsar.config import load_config
    from stzsar.train import train

    result = train(load_config("fewshot_ucf101"), dataset=subset_split,
                   model=model_from_checkpoint, attributes=attributes)
    result.model, result.checkpoint
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn
from torch.utils.data import DataLoader

from stzsar import devices
from stzsar.config import Config, save_config, validate_config
from stzsar.train import distributed as dist_utils
from stzsar.train.checkpoint import (
    CheckpointError,
    CheckpointManager,
    architecture_mismatch,
    capture_rng_state,
    load_weights,
    locate_checkpoint,
    read_checkpoint,
    restore_normalisation,
    restore_rng_state,
    save_checkpoint,
    unwrap_model,
)
from stzsar.train.log import MetricsLogger, Throughput, progress_bar
from stzsar.train.loss import gather_sizes, in_batch_loss
from stzsar.train.optim import build_optimizer, build_scheduler, clip_gradients
from stzsar.train.sampling import EpochSampler, SeededDataset, _worker_init, seed_everything

logger = logging.getLogger("stzsar.train")

PathLike = Union[str, Path]


class NonFiniteLossError(FloatingPointError):
    """The loss (or the gradient) became NaN/inf. Attributes name where, and the checkpoint saved."""

    def __init__(self, what: str, step: int, epoch: int, batch: int, indices: Sequence[int],
                 value: float, checkpoint: Optional[Path]):
        self.what = what
        self.step = step
        self.epoch = epoch
        self.batch = batch
        self.indices = list(indices)
        self.value = value
        self.checkpoint = checkpoint
        shown = self.indices[:16]
        super().__init__(
            f"non-finite {what} ({value}) at optimizer step {step} (epoch {epoch}, micro-batch {batch} "
            f"of the epoch), videos {shown}{' ...' if len(self.indices) > 16 else ''}; "
            f"state before this step saved to {checkpoint}"
        )


class UnreadableDataError(RuntimeError):
    """Training stopped because its videos could not be read: a micro-batch with no readable
    video, or more than ``data.max_unreadable`` of the split unreadable. Raised before the step
    that would have used them updates anything (no optimizer or schedule step, no checkpoint).

    Attributes: ``videos`` (the unreadable :class:`stzsar.data.SkippedVideo` records the message
    counts), ``total`` (videos in the split), ``step`` (optimizer steps done)."""

    def __init__(self, message: str, videos: Sequence[Any], total: int, step: int):
        self.videos = list(videos)
        self.total = total
        self.step = step
        super().__init__(message)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C (SIGINT) at an optimizer-step boundary, its state checkpointed.

    A ``KeyboardInterrupt``, so code that catches that still does; ``checkpoint`` continues the run
    (``stzsar train --resume <run_dir>``)."""

    def __init__(self, step: int, epoch: int, run_dir: Path, checkpoint: Optional[Path]):
        self.step = step
        self.epoch = epoch
        self.run_dir = run_dir
        self.checkpoint = checkpoint
        super().__init__(f"interrupted after optimizer step {step} (epoch {epoch}); "
                         f"checkpoint: {checkpoint}")


class _StopOnInterrupt:
    """Turns the first Ctrl-C into a request to stop at the next optimizer-step boundary; a second
    one interrupts at once (``KeyboardInterrupt``, which ``stzsar train`` ends with exit 130).

    Only the main thread can take signals; elsewhere nothing changes. Processes forked from this
    one (DataLoader workers) inherit the handler but are not the trainer: there it does nothing,
    so the message is printed once, by rank 0 (``announce``).
    """

    def __init__(self, announce: bool = True):
        self.requested = False
        self.announce = announce
        self._previous = None
        self._pid = os.getpid()

    def _handle(self, signum, frame):
        if os.getpid() != self._pid:
            return
        self.requested = True
        signal.signal(signal.SIGINT, self._handle_again)
        if self.announce:
            logger.warning("Ctrl-C: stopping after the current step and writing a checkpoint "
                           "(press it again to stop at once)")

    def _handle_again(self, signum, frame):
        if os.getpid() != self._pid:
            return
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt

    def __enter__(self) -> "_StopOnInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._pid = os.getpid()
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def agreed(self, device: torch.device, distributed: bool) -> bool:
        """Whether any rank was interrupted (every rank must stop at the same step)."""
        if not distributed:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item() > 0)


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    model: nn.Module  # the trained STZSARModel (unwrapped)
    run_dir: Path
    checkpoint: Optional[Path]  # the last checkpoint written
    step: int
    epoch: int
    history: List[Dict[str, float]] = field(default_factory=list)  # per step: step, loss, lr, ...
    skipped: List[Any] = field(default_factory=list)  # videos skipped as unreadable


# --------------------------------------------------------------------------------------------
# Data


def _is_skipped(item: Any) -> bool:
    return hasattr(item, "reason") and hasattr(item, "path") and not isinstance(item, (dict, tuple))


def collate(items: Sequence[Any]) -> Dict[str, Any]:
    """Stack ``{"video", "label", "index"}`` items (or ``(video, label)`` tuples); skipped videos
    (:class:`stzsar.data.SkippedVideo`) are listed under ``"skipped"``, never dropped silently."""
    good, skipped = [], []
    for position, item in enumerate(items):
        if _is_skipped(item):
            skipped.append(item)
            continue
        if isinstance(item, (tuple, list)):
            item = {"video": item[0], "label": int(item[1]), "index": int(item[2]) if len(item) > 2 else -1}
        if not isinstance(item, Mapping) or "video" not in item or "label" not in item:
            raise TypeError(
                f"dataset items must be dicts with 'video' and 'label' (or (video, label) tuples), "
                f"got {type(item).__name__}"
            )
        good.append(item)
    if good:
        video = torch.stack([torch.as_tensor(item["video"]) for item in good])
    else:
        video = torch.empty(0)
    return {
        "video": video,
        "label": torch.tensor([int(item["label"]) for item in good], dtype=torch.long),
        "index": torch.tensor([int(item.get("index", -1)) for item in good], dtype=torch.long),
        "skipped": skipped,
    }


def load_attributes(path: PathLike) -> Dict[str, List[str]]:
    """``{class: [keywords]}`` from an attribute file (``stzsar attributes`` output or plain JSON)."""
    from stzsar.attributes import load_attributes as _load

    return dict(_load(path))


def check_data_config(config: Config) -> None:
    """Fail early (before building the model) on a data section that cannot make a training set."""
    data = config.data
    if data.decoder == "dali":
        # The resumable, rank-sharded data order needs a torch sampler; DALI keeps its own order.
        raise ValueError("training decodes with PyAV in DataLoader workers (data.decoder=auto or pyav); "
                         "data.decoder=dali is for evaluation")
    missing = [k for k in ("root", "train_list") if getattr(data, k) in (None, "")]
    if missing:
        raise ValueError(
            f"training needs data.{' and data.'.join(missing)} (set them in the config file or with "
            f"--set data.root=DIR --set data.train_list=FILE), or pass dataset= to train()"
        )


def build_train_dataset(config: Config, model: nn.Module):
    """The training :class:`stzsar.data.VideoDataset` of ``config.data`` (few-shot subset if
    ``data.shots``), with ``model``'s clip settings (:func:`data_clip_spec`)."""
    from stzsar.data import build_split, few_shot

    check_data_config(config)
    data = config.data
    split = build_split(data.format, data.train_list, data.root, labels=data.labels, split=data.split,
                        subset=data.train_subset)
    if data.shots:
        split = few_shot(split, data.shots, seed=config.train.seed)
    return split_dataset(split, config, model)


def data_clip_spec(model: nn.Module, data: Any, training: bool = True):
    """The clips ``model`` takes under the data settings ``data`` (``config.data``): its input size
    and normalisation, as evaluation and ``predict`` make them (:func:`stzsar.eval.loading.clip_spec`:
    the model's ``image_mean``/``image_std``, not OpenAI CLIP's defaults), with ``data``'s frame
    count, crop size (``data.size`` wins when set), short side and, for training, flips."""
    from stzsar.eval.loading import clip_spec

    spec = clip_spec(unwrap_model(model), data.num_frames)
    return dataclasses.replace(spec, size=data.size or spec.size, short_side=data.short_side,
                               hflip=data.hflip if training else 0.0)


def split_dataset(split, config: Config, model: nn.Module):
    """A training :class:`stzsar.data.VideoDataset` over ``split`` with ``model``'s clip settings."""
    from stzsar.data import VideoDataset

    data = config.data
    return VideoDataset(split, data_clip_spec(model, data), training=True, strict=data.strict,
                        seed=config.train.seed)


# --------------------------------------------------------------------------------------------
# The trainer


def resolve_device(name: str, local_rank: int = 0, distributed: bool = False) -> torch.device:
    """The device of ``train.device`` for this process, by the rule every command uses
    (:func:`stzsar.devices.resolve_device`): ``cuda`` and ``auto`` mean the GPU of its local rank,
    and under a launcher an explicit ``cuda:N`` naming another GPU is an error."""
    return devices.resolve_device(name, local_rank, distributed, setting="train.device")


def no_buffer_sync() -> Dict[str, bool]:
    """The ``DistributedDataParallel`` argument that stops the per-forward buffer broadcast:
    ``forward_sync_buffers=False`` where torch has it (it deprecates ``broadcast_buffers``),
    ``broadcast_buffers=False`` on older releases."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def resolve_precision(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype (``None``: fp32)."""
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def resolve_compile(setting: Union[bool, str], device: torch.device) -> bool:
    """Whether ``train.compile`` / ``stzsar eval --compile`` compiles on ``device``: ``auto`` is on
    for CUDA devices when Triton (inductor's GPU code generator) imports, off on the CPU, where
    the compile time outweighs the saving at the sizes the CPU trains (docs/benchmarks.md,
    "Compiled train step")."""
    if isinstance(setting, str):
        text = setting.strip().lower()
        if text == "auto":
            if torch.device(device).type != "cuda":
                return False
            try:
                import triton  # noqa: F401
            except ImportError:
                logger.warning("compile=auto: Triton is not importable, so the model runs eagerly")
                return False
            return True
        if text in ("true", "false"):
            return text == "true"
        raise ValueError(f"compile must be auto, true or false, got {setting!r}")
    return bool(setting)


def compile_model(model: nn.Module) -> nn.Module:
    """``torch.compile`` the video encoder and the STI head of ``model`` in place (returns it).

    Parameter and buffer names stay the same (``nn.Module.compile`` and a compiled bound method
    instead of a wrapper module), so checkpoints are interchangeable with eager runs. The STI head
    is compiled both as a module (``forward``: ``f_st``) and through ``similarity``, the call the
    model's logits make. A second call does nothing. The fused ops trace without graph breaks
    (tests/test_compile.py).
    """
    model = unwrap_model(model)
    if getattr(model, "_stzsar_compiled", False):
        return model
    model.video.compile()
    sti = model.sti
    sti.compile()
    sti.similarity = torch.compile(sti.similarity)
    model._stzsar_compiled = True
    return model


class Trainer:
    """Holds the model, data, optimizer and run folder of one training run; :meth:`fit` trains.

    Args:
        config: the resolved configuration.
        dataset: the training set: a torch ``Dataset`` of ``{"video", "label", "index"}`` items,
            a :class:`stzsar.data.VideoSplit` (clips made with ``config.data``), or ``None`` to
            build it from ``config.data``.
        class_names: training classes, in label order (default: ``dataset.classes``).
        attributes: ``{class: [keywords]}`` (default: the file ``config.data.attributes``, if any).
        model: a ready model (e.g. loaded from a checkpoint); default: built from ``config.model``.
        resume: a checkpoint file or run folder to continue from.
        callbacks: ``fn(trainer, step)`` called after each optimizer step.
        save_checkpoints: write checkpoints (``False`` for throwaway runs such as ablations).
    """

    def __init__(
        self,
        config: Config,
        dataset: Any = None,
        *,
        class_names: Optional[Sequence[str]] = None,
        attributes: Optional[Mapping[str, Sequence[str]]] = None,
        model: Optional[nn.Module] = None,
        resume: Optional[PathLike] = None,
        callbacks: Sequence[Callable[["Trainer", int], None]] = (),
        save_checkpoints: bool = True,
    ):
        validate_config(config)
        config = copy.deepcopy(config)  # the caller's object stays as it was
        self.config = config
        cfg_train, cfg_optim = config.train, config.optim
        self.callbacks = list(callbacks)
        self.save_checkpoints = save_checkpoints

        # The device is checked before the process group starts, so a bad one fails cleanly.
        self.device = resolve_device(cfg_train.device, dist_utils.local_rank(),
                                     dist_utils.launched_world_size() > 1)
        self.dist = dist_utils.init_distributed(self.device.type)
        self.autocast_dtype = resolve_precision(cfg_train.precision, self.device)
        if cfg_train.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(cfg_train.seed)

        if dataset is None:
            check_data_config(config)

        # Model.
        if model is None:
            model = config.model_config()
            from stzsar.model import build_model_from_config

            model = build_model_from_config(model)
        model = unwrap_model(model).to(self.device)
        if getattr(model, "config", None) is not None:
            # A given model (e.g. from a checkpoint) decides the architecture: record that one.
            config.model = type(config.model)(**dataclasses.asdict(model.config))
        model.train()
        model.text.eval()  # frozen tower: no dropout either
        if cfg_train.grad_checkpointing:
            model.video.set_grad_checkpointing(True)
        if resolve_compile(cfg_train.compile, self.device):
            compile_model(model)  # in place: parameter names (and checkpoints) stay the same
        self.model = model

        # Data.
        self._clips_follow_model = dataset is None or type(dataset).__name__ == "VideoSplit"
        if dataset is None:
            dataset = build_train_dataset(config, model)
        elif type(dataset).__name__ == "VideoSplit":
            dataset = split_dataset(dataset, config, model)
        self.dataset = dataset
        split = getattr(dataset, "split", None)
        self.data_root = getattr(split, "root", None) or config.data.root  # named when videos are unreadable
        if class_names is None:
            class_names = getattr(dataset, "classes", None)
            if class_names is None:
                raise ValueError("class_names not given and the dataset has no .classes")
        self.class_names = list(class_names)
        if attributes is None and config.data.attributes:
            attributes = load_attributes(config.data.attributes)
        self.attributes = ({k: list(v)[: config.data.num_attributes] for k, v in attributes.items()}
                           if attributes else None)
        if self.attributes is not None:
            from stzsar.classes import canonical_name

            known = {canonical_name(k) for k in self.attributes}
            bare = [c for c in self.class_names if canonical_name(c) not in known]
            if bare:
                logger.warning("no attributes for %d of %d training classes (their prompts use the name "
                               "alone): %s", len(bare), len(self.class_names), bare[:10])
        with torch.no_grad():
            self.bank = model.encode_classes(self.class_names, self.attributes).to(self.device)

        world = self.dist.world_size
        accum = cfg_optim.grad_accum
        if cfg_train.batch_size % (world * accum):
            raise ValueError(
                f"train.batch_size={cfg_train.batch_size} must divide by world_size x optim.grad_accum "
                f"= {world} x {accum}"
            )
        self.per_rank = cfg_train.batch_size // (world * accum)
        self.sampler = EpochSampler(len(dataset), self.per_rank, cfg_train.seed, self.dist.rank, world)
        self.seeded = SeededDataset(dataset, cfg_train.seed)
        self.steps_per_epoch = self.sampler.batches_per_epoch // accum
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"{len(dataset)} videos make {self.sampler.batches_per_epoch} micro-batches of "
                f"{self.per_rank * world}, fewer than optim.grad_accum={accum}: lower train.batch_size"
            )
        self.total_steps = cfg_train.epochs * self.steps_per_epoch
        if cfg_train.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg_train.max_steps)
        workers = config.data.num_workers
        self.loader = DataLoader(
            self.seeded, batch_size=self.per_rank, sampler=self.sampler, num_workers=workers,
            collate_fn=collate, pin_memory=self.device.type == "cuda", drop_last=False,
            worker_init_fn=_worker_init if workers else None, persistent_workers=False,
        )

        # Optimisation.
        self.optimizer = build_optimizer(model, cfg_optim.lr, cfg_optim.weight_decay, cfg_optim.betas,
                                         cfg_optim.eps)
        warmup = int(round(cfg_optim.warmup_epochs * self.steps_per_epoch))
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, warmup, cfg_optim.warmup_start,
                                         cfg_optim.min_lr_ratio)
        self.scaler = (torch.amp.GradScaler(self.device.type)
                       if self.autocast_dtype == torch.float16 else None)
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                **no_buffer_sync(),  # logit_scale and masks are constants
            )
        else:
            self.ddp = None

        # Run folder and position.
        self.run_dir = Path(cfg_train.output_dir)
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", cfg_train.keep_last)
        self.step = 0
        self.epoch = 0
        self.micro_in_epoch = 0
        self.last_checkpoint: Optional[Path] = None
        self.history: List[Dict[str, float]] = []
        self.skipped: Dict[int, Any] = {}
        if resume is not None:
            self._resume(locate_checkpoint(resume))
        self.log = MetricsLogger(self.run_dir if self.dist.is_main else None, cfg_train.tensorboard)
        if self.dist.is_main:
            save_config(config, self.run_dir / "config.yaml")

    # ----------------------------------------------------------------------------------------

    @property
    def forward_module(self) -> nn.Module:
        return self.ddp if self.ddp is not None else self.model

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _extra(self) -> Dict[str, Any]:
        return {
            "micro_in_epoch": self.micro_in_epoch,
            "world_size": self.dist.world_size,
            "global_micro_batch": self.per_rank * self.dist.world_size,
            "class_names": self.class_names,
            "attributes": self.attributes,
            "skipped_videos": [dataclasses.asdict(s) if dataclasses.is_dataclass(s) else str(s)
                               for s in self.skipped.values()],
        }

    def save(self, path: Optional[Path] = None) -> Optional[Path]:
        """Checkpoint the current state (rank 0 writes; every rank contributes its RNG state)."""
        rng = dist_utils.all_gather_object(capture_rng_state())
        written = None
        if self.dist.is_main:
            kwargs = dict(model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                          scaler=self.scaler, epoch=self.epoch, config=self.config,
                          full=self.config.train.full_checkpoint, extra=self._extra(), rng=rng)
            if path is None:
                written = self.checkpoints.save(self.step, **kwargs)
            else:
                written = save_checkpoint(path, step=self.step, **kwargs)
            self.log.event(self.step, event="checkpoint", path=str(written))
        dist_utils.barrier()
        self.last_checkpoint = dist_utils.broadcast_object(str(written) if written else None)
        self.last_checkpoint = Path(self.last_checkpoint) if self.last_checkpoint else None
        return self.last_checkpoint

    def _resume(self, path: Path) -> None:
        payload = read_checkpoint(path, map_location="cpu")
        differences = architecture_mismatch(payload.get("model_config"), getattr(self.model, "config", None))
        if differences:
            stored = payload["model_config"]
            raise CheckpointError(
                f"{path}: the checkpoint holds another model than this run's configuration asks for "
                f"({'; '.join(differences)}): resume with the checkpoint's own configuration "
                f"(stzsar train --resume without --config, or --set model.name={stored.get('name')} and the "
                f"other values named), or start a new run in another train.output_dir"
            )
        load_weights(self.model, payload, source=str(path))
        restore_normalisation(self.model, payload, source=str(path))
        if self._clips_follow_model:
            # Clips normalised as the run so far trained (the workers start after this).
            self.dataset.spec = data_clip_spec(self.model, self.config.data)
        if payload.get("optimizer") is None or payload.get("scheduler") is None:
            raise RuntimeError(f"{path}: holds no optimizer/scheduler state; it cannot resume a run")
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        if self.scaler is not None and payload.get("scaler") is not None:
            self.scaler.load_state_dict(payload["scaler"])
        extra = payload.get("extra", {})
        if extra.get("global_micro_batch") not in (None, self.per_rank * self.dist.world_size):
            raise RuntimeError(
                f"{path}: saved with global micro-batches of {extra['global_micro_batch']} videos, this run "
                f"uses {self.per_rank * self.dist.world_size}; keep train.batch_size / optim.grad_accum "
                f"to continue the same data order"
            )
        self.step = int(payload["step"])
        self.epoch = int(payload["epoch"])
        self.last_checkpoint = Path(path)
        self.micro_in_epoch = int(extra.get("micro_in_epoch", 0))
        from stzsar.data import SkippedVideo

        for record in extra.get("skipped_videos", []):
            if isinstance(record, dict) and {"index", "path", "reason"} <= set(record):
                self.skipped[record["index"]] = SkippedVideo(record["index"], record["path"], record["reason"])
        rng = payload.get("rng") or []
        if rng:
            if len(rng) != self.dist.world_size:
                logger.warning("%s: saved by %d rank(s), resumed on %d: RNG states of rank 0 reused",
                               path, len(rng), self.dist.world_size)
            restore_rng_state(rng[self.dist.rank] if len(rng) == self.dist.world_size else rng[0])
        if self.dist.is_main:
            logger.info("resumed from %s at step %d (epoch %d, micro-batch %d)", path, self.step,
                        self.epoch, self.micro_in_epoch)

    def _nonfinite(self, what: str, value: float, indices: Sequence[int], batch: int) -> None:
        path = self.run_dir / "checkpoints" / f"nan_step_{self.step + 1:08d}.pt"
        saved = self.save(path)
        self.log.event(self.step + 1, event="non-finite", what=what, value=value, batch=batch,
                       indices=list(indices))
        raise NonFiniteLossError(what, self.step + 1, self.epoch, batch, indices, value, saved)

    def _sync_gradients_manually(self) -> None:
        # Used when the last micro-batch of a step was empty on some rank (every video skipped):
        # DDP did not synchronise, so average the gradients here.
        world = self.dist.world_size
        for param in self.model.parameters():
            if param.requires_grad:
                if param.grad is None:
                    param.grad = torch.zeros_like(param)
                torch.distributed.all_reduce(param.grad)
                param.grad.div_(world)

    # ----------------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Train until ``total_steps``; returns the model and where its checkpoints are."""
        cfg = self.config.train
        accum = self.config.optim.grad_accum
        throughput = Throughput()
        bar = progress_bar(self.total_steps, self.step, self.dist.is_main and cfg.progress)
        if self.dist.is_main:
            self.log.event(self.step, event="start", total_steps=self.total_steps,
                           steps_per_epoch=self.steps_per_epoch, world_size=self.dist.world_size,
                           per_rank_batch=self.per_rank, device=str(self.device),
                           train_videos=len(self.dataset), classes=len(self.class_names))
        window_loss: List[float] = []
        saved_at = self.step if self.step > 0 else -1
        throughput.start()
        interrupt = _StopOnInterrupt(announce=self.dist.is_main)
        distributed = self.dist.world_size > 1
        try:
            interrupt.__enter__()
            while self.step < self.total_steps:
                if self.micro_in_epoch >= self.steps_per_epoch * accum:  # epoch finished before a kill
                    self.epoch += 1
                    self.micro_in_epoch = 0
                self.sampler.set_epoch(self.epoch, self.micro_in_epoch)
                self.seeded.set_epoch(self.epoch)
                if hasattr(self.dataset, "epoch"):
                    self.dataset.epoch = self.epoch
                batches = iter(self.loader)
                while self.step < self.total_steps and self.micro_in_epoch < self.steps_per_epoch * accum:
                    if interrupt.agreed(self.device, distributed):
                        saved_at = self._stop_interrupted(saved_at)
                    step_start = self.micro_in_epoch
                    try:
                        outcome = self._train_step(batches, accum)
                    except (UnreadableDataError, NonFiniteLossError):
                        raise
                    except Exception:
                        # Our workers ignore Ctrl-C, but those of a spawn start method or of a
                        # dataset's own may exit on it: the step in flight is dropped (no
                        # optimizer update happened yet) and the run stops.
                        if not interrupt.requested or distributed:
                            raise
                        self.micro_in_epoch = step_start
                        self.optimizer.zero_grad(set_to_none=True)
                        saved_at = self._stop_interrupted(saved_at)
                    if outcome is None:
                        # Every micro-batch lost all videos of some rank: nothing was learnt, so the
                        # step count, the schedule and the checkpoints stay where they were.
                        if self.dist.is_main:
                            self.log.event(self.step, event="step without data", epoch=self.epoch,
                                           micro_batches=accum)
                        if self.micro_in_epoch >= self.steps_per_epoch * accum:
                            self.epoch += 1
                            self.micro_in_epoch = 0
                            break
                        continue
                    loss_value, clips, grad_norm = outcome
                    self.step += 1
                    lr = self.optimizer.param_groups[0]["lr"]
                    rate = throughput.update(clips)
                    window_loss.append(loss_value)
                    self.history.append({"step": self.step, "loss": loss_value, "lr": lr,
                                         "grad_norm": grad_norm})
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", clips_s=f"{rate:.1f}",
                                    epoch=self.epoch, refresh=False)
                    if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                        self.log.log(self.step, {"loss": sum(window_loss) / len(window_loss), "lr": lr,
                                                 "clips_per_s": rate, "grad_norm": grad_norm,
                                                 "epoch": self.epoch})
                        window_loss = []
                    epoch_done = self.micro_in_epoch >= self.steps_per_epoch * accum
                    if epoch_done:
                        self.epoch += 1
                        self.micro_in_epoch = 0
                    if self.save_checkpoints and (
                        epoch_done or (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0)
                    ):
                        self.save()
                        saved_at = self.step
                    for callback in self.callbacks:
                        callback(self, self.step)
                    if epoch_done:
                        break
                del batches  # stops the epoch's workers
            if self.save_checkpoints and saved_at != self.step:
                self.save()
        finally:
            interrupt.__exit__()
            bar.close()
        if self.dist.is_main:
            self.log.event(self.step, event="end", checkpoint=str(self.last_checkpoint))
        self.log.close()
        self.model.eval()
        return TrainResult(self.model, self.run_dir, self.last_checkpoint, self.step, self.epoch,
                           self.history, list(self.skipped.values()))

    def _stop_interrupted(self, saved_at: int) -> int:
        """Checkpoint the last finished step (unless that is done already) and raise."""
        if self.save_checkpoints and saved_at != self.step:
            self.save()
        if self.dist.is_main:
            self.log.event(self.step, event="interrupted", checkpoint=str(self.last_checkpoint))
        self.log.close()
        raise TrainingInterrupted(self.step, self.epoch, self.run_dir,
                                  self.last_checkpoint if self.save_checkpoints else None)

    def _record_skipped(self, skipped: Sequence[Any], readable: int) -> None:
        """Record a micro-batch's unreadable videos (every rank's), log new ones once (rank 0),
        and stop the run (:class:`UnreadableDataError`) when the global micro-batch has no
        readable video (``readable``) or the split's unreadable share passes the limit."""
        records = list(skipped)
        if self.dist.distributed and dist_utils.any_rank(bool(records), self.device):
            # Every rank keeps the whole set: the share is over the split, not one rank's part.
            records = [record for part in dist_utils.all_gather_object(records) for record in part]
        for record in records:
            index = getattr(record, "index", None)
            key = index if index is not None else getattr(record, "path", None)
            if key not in self.skipped:
                self.skipped[key] = record
                if self.dist.is_main:
                    logger.warning("skipping video %s (%s): %s", index, getattr(record, "path", "?"),
                                   getattr(record, "reason", "?"))
        total = len(self.dataset)
        allowed = self.config.data.max_unreadable
        if readable == 0:
            headline = (f"no video of micro-batch {self.micro_in_epoch - 1} (epoch {self.epoch}) could be "
                        f"read; {len(self.skipped)} of the {total} training videos are unreadable so far")
            shown = records
        elif len(self.skipped) > allowed * total:
            headline = (f"{len(self.skipped)} of the {total} training videos could not be read "
                        f"({len(self.skipped) / total:.1%}; data.max_unreadable allows {allowed:.1%}: raise it to "
                        f"train without them)")
            shown = list(self.skipped.values())
        else:
            return
        from stzsar.data.unreadable import unreadable_message

        message = unreadable_message(
            f"{headline}. Training stopped after {self.step} optimizer step(s); the step that needed "
            f"these videos changed nothing and wrote no checkpoint.",
            [(str(getattr(r, "path", "?")), str(getattr(r, "reason", "?"))) for r in shown],
            self.data_root,
        )
        if self.dist.is_main:
            self.log.event(self.step, event="unreadable", videos=len(self.skipped), total=total)
        raise UnreadableDataError(message, shown, total, self.step)

    def _train_step(self, batches, accum: int):
        """One optimizer step over ``accum`` micro-batches; returns (loss, clips, grad norm), or
        ``None`` when no micro-batch had videos on every rank (then nothing was updated)."""
        total_loss, clips = 0.0, 0
        synced = False
        forward = self.forward_module
        for micro in range(accum):
            batch = next(batches)
            self.micro_in_epoch += 1
            labels = batch["label"].to(self.device)
            sizes = gather_sizes(labels.shape[0], self.device)
            self._record_skipped(batch["skipped"], int(sizes.sum()))
            if int(sizes.min()) == 0:
                # A rank has no video (all skipped): every rank skips this micro-batch.
                continue
            video = batch["video"].to(self.device, non_blocking=True)
            last = micro == accum - 1
            sync = contextlib.nullcontext() if (self.ddp is None or last) else self.ddp.no_sync()
            with sync:
                result = in_batch_loss(forward, video, labels, self.bank, batch["index"], sizes,
                                       autocast=self.autocast())
                loss = result.loss
                if not bool(torch.isfinite(loss.detach())):
                    self._nonfinite("loss", float(loss.detach()), result.indices.tolist(),
                                    self.micro_in_epoch - 1)
                scaled = loss / accum
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            synced = synced or last
            total_loss += float(loss.detach())
            clips += int(result.sizes.sum())
        if clips == 0:
            self.optimizer.zero_grad(set_to_none=True)
            return None
        if self.ddp is not None and not synced:
            self._sync_gradients_manually()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = float(clip_gradients(self.model.parameters(), self.config.optim.grad_clip))
        if not math.isfinite(grad_norm) and self.scaler is None:
            self._nonfinite("gradient norm", grad_norm, [], self.micro_in_epoch - 1)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total_loss / accum, clips, grad_norm


def train(config: Config, dataset: Any = None, **kwargs) -> TrainResult:
    """Train with ``config`` (see :class:`Trainer` for the arguments); returns a :class:`TrainResult`.

    Initialises the process group when launched by ``torchrun`` and tears it down afterwards
    (only if it created it).
    """
    trainer = Trainer(config, dataset, **kwargs)
    try:
        return trainer.fit()
    finally:
        dist_utils.cleanup(trainer.dist)
