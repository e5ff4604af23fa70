"""The whole model: CLIP video and text encoders around the STI module, and its factory.

``build_model(name, pretrained)`` makes an open_clip model (any of its architecture names, or the
tiny stzsar configs in ``stzsar/model_configs/`` registered under ``stzsar-*`` names) and wraps its
towers: the image tower runs per frame (``stzsar.video``), the frozen text tower encodes the class
prompts once per class list (``stzsar.text``), and ``STIModule`` scores every (video, class).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import socket
import threading
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from stzsar.sti import STIModule
from stzsar.text import ClassBank, TextEncoder
from stzsar.text.prompts import DEFAULT_TEMPLATE, build_prompts
from stzsar.video import VideoEncoder

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"


class PretrainedWeightsUnavailable(RuntimeError):
    """Raised when the CLIP weights asked for cannot be had (no network, unknown tag, bad file)."""


@dataclass
class ModelConfig:
    """Everything ``build_model`` needs to rebuild a model (saved in checkpoints)."""

    name: str = "ViT-B-16"
    pretrained: Optional[str] = None
    frozen_blocks: Optional[int] = None
    temporal_layers: int = 0
    temperature: float = 0.01
    normalize: bool = True
    template: str = DEFAULT_TEMPLATE
    word_tokens: str = "class_and_attributes"
    backend: str = "auto"
    image_size: Optional[int] = None
    spatial_interaction: bool = True
    temporal_interaction: bool = True


def upgrade_model_keys(values: Mapping[str, Any]) -> Dict[str, Any]:
    """Model settings as this release names them, from a checkpoint or file of an earlier one.

    ``template_words`` (true: every token of the prompt counts as a word; false: the template's
    words are masked) became ``word_tokens`` (``sentence`` / ``class_and_attributes``, which also
    masks the punctuation between attributes)."""
    values = dict(values)
    if "template_words" in values:
        keep_template = bool(values.pop("template_words"))
        values.setdefault("word_tokens", "sentence" if keep_template else "class_and_attributes")
        logging.getLogger("stzsar").info(
            "model setting template_words=%s read as word_tokens=%s", keep_template, values["word_tokens"])
    return values


@functools.lru_cache(maxsize=None)
def register_model_configs() -> None:
    """Make the ``stzsar-*`` configs known to open_clip (once)."""
    import open_clip

    open_clip.add_model_config(MODEL_CONFIG_DIR)


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded for model")


@contextlib.contextmanager
def _quiet_random_init():
    """open_clip warns on the root logger whenever it builds a model without weights; where that is
    intended (the weights come from a file or a checkpoint right after) the warning misleads."""
    root = logging.getLogger()
    quiet = _DropRandomInitWarning()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


#: Seconds the reachability check of the weight server waits before calling it unreachable.
HUB_CHECK_TIMEOUT_S = 3.0


def _offline_advice(name: str, where: str = "") -> str:
    """The two ways to get weights without a download, for every weight-loading error."""
    fetch = f" (from {where})" if where else ""
    return (
        f"Without network: download the weights elsewhere{fetch} and pass the local file, "
        f"build_model({name!r}, pretrained='/path/to/weights.bin') or "
        f"`--set model.pretrained=/path/to/weights.bin`; or copy the open_clip/Hugging Face cache "
        f"(~/.cache/huggingface/hub, or $HF_HUB_CACHE) from a machine that downloaded them and set "
        f"HF_HUB_OFFLINE=1 (offline mode: the cache is read and no download is tried)."
    )


@dataclass
class _WeightSource:
    """Where open_clip would fetch a pretrained tag's weights from, and the local copy if cached."""

    url: str                # the server to reach (the hub endpoint or the download URL)
    where: str              # what to download, for the error message
    cached: Optional[str]   # a local file open_clip would use without a download
    hub: bool               # fetched through huggingface_hub (which honours HF_HUB_OFFLINE)


def _weight_source(name: str, tag: str) -> Optional[_WeightSource]:
    """The download behind ``open_clip.create_model(name, pretrained=tag)``, mirroring open_clip's
    choice (hub first when huggingface_hub is installed, else the URL); ``None`` when the tag is
    unknown or names a file (open_clip then reports it)."""
    import open_clip
    from open_clip import pretrained as oc_pretrained

    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg or "file" in cfg:
        return None
    hub_path, url = cfg.get("hf_hub", ""), cfg.get("url", "")
    if hub_path and oc_pretrained.has_hf_hub():
        from huggingface_hub import constants, try_to_load_from_cache
        from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

        repo, filename = os.path.split(hub_path)
        filename = filename or HF_WEIGHTS_NAME
        # open_clip tries a .safetensors twin first, then the named file.
        candidates = ([HF_SAFE_WEIGHTS_NAME] if filename == HF_WEIGHTS_NAME else
                      [filename.rsplit(".", 1)[0] + ".safetensors"] if filename.endswith((".bin", ".pth")) else [])
        cached = None
        for candidate in candidates + [filename]:
            found = try_to_load_from_cache(repo, candidate)
            if isinstance(found, str) and os.path.isfile(found):
                cached = found
                break
        return _WeightSource(constants.ENDPOINT, f"{constants.ENDPOINT}/{repo}/resolve/main/{filename}",
                             cached, hub=True)
    if url:
        target = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        return _WeightSource(url, url, target if os.path.isfile(target) else None, hub=False)
    return None


def _unreachable(url: str, timeout: float = HUB_CHECK_TIMEOUT_S) -> Optional[str]:
    """Why ``url``'s server (or the proxy in front of it) takes no TCP connection within
    ``timeout`` seconds; ``None`` when it does. Name resolution has no timeout of its own, hence
    the thread."""
    parsed = urllib.parse.urlsplit(url)
    host, port = parsed.hostname or "", parsed.port or (443 if parsed.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parsed.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxied = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxied.hostname or host, proxied.port or 80
    failure: List[str] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as error:
            failure.append(f"{type(error).__name__}: {error}")

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if thread.is_alive():
        return f"no answer from {host}:{port} within {timeout:g} s"
    return f"cannot connect to {host}:{port} ({failure[0]})" if failure else None


@contextlib.contextmanager
def _hub_logging():
    """Each hub warning printed once: huggingface_hub has its own stderr handler, and open_clip's
    module-level ``logging.info`` calls install a root handler (``basicConfig``) that prints every
    propagated record a second time. A root without handlers gets a null one for the call (which
    keeps open_clip from configuring the caller's logging); the hub's records stay with its handler."""
    root, hub = logging.getLogger(), logging.getLogger("huggingface_hub")
    null = logging.NullHandler() if not root.handlers else None
    if null is not None:
        root.addHandler(null)
    propagate = hub.propagate
    if hub.handlers:
        hub.propagate = False
    try:
        yield
    finally:
        hub.propagate = propagate
        if null is not None:
            root.removeHandler(null)


@contextlib.contextmanager
def _weight_access(name: str, tag: str):
    """Fail within seconds where a download cannot work, instead of the hub client's minute of
    retries: weights already cached are read in offline mode; otherwise offline mode, or a weight
    server that takes no connection, raise :class:`PretrainedWeightsUnavailable` at once."""
    source = _weight_source(name, tag)
    if source is None:
        with _hub_logging():
            yield
        return
    if source.hub:
        from huggingface_hub import constants
        offline = constants.is_offline_mode() if hasattr(constants, "is_offline_mode") else constants.HF_HUB_OFFLINE
    else:
        offline = False
    if source.cached is None:
        reason = ("offline mode is on (HF_HUB_OFFLINE=1)" if offline
                  else _unreachable(source.url))
        if reason is not None:
            raise PretrainedWeightsUnavailable(
                f"could not load pretrained weights {tag!r} for {name!r}: they are not in the local "
                f"cache and cannot be downloaded: {reason}.\n" + _offline_advice(name, source.where))
    forced = source.hub and source.cached is not None and not offline
    if forced:  # read the cache without asking the hub (no network calls, no retries)
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = True
    try:
        with _hub_logging():
            yield
    finally:
        if forced:
            constants.HF_HUB_OFFLINE = False


def _create_clip(name: str, pretrained: Optional[str], image_size: Optional[int], meta: bool = False):
    import open_clip

    register_model_configs()
    if name not in open_clip.list_models():
        raise ValueError(f"unknown model {name!r}; open_clip knows {len(open_clip.list_models())} "
                         f"names, e.g. ViT-B-16, ViT-L-14, stzsar-tiny")
    kwargs = {"force_image_size": image_size} if image_size else {}
    if meta:
        kwargs["device"] = "meta"  # open_clip would otherwise copy the meta tensors to the CPU
    is_file = bool(pretrained) and os.path.isfile(str(pretrained))
    tokenizer = _load_tokenizer(name, meta)  # first: a missing tokenizer fails before a long build
    try:
        if pretrained and is_file:
            with _quiet_random_init():
                clip = open_clip.create_model(name, pretrained=None, **kwargs)
            load_clip_weights(clip, pretrained)
        elif not pretrained:
            # Random weights on purpose: from scratch, or weights loaded later from a checkpoint.
            with _quiet_random_init():
                clip = open_clip.create_model(name, pretrained=None, **kwargs)
        else:
            with _weight_access(name, pretrained):
                clip = open_clip.create_model(name, pretrained=pretrained, **kwargs)
    except PretrainedWeightsUnavailable:
        raise
    except Exception as error:  # open_clip raises RuntimeError/OSError chains for network failures
        if not pretrained:
            raise
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise PretrainedWeightsUnavailable(
            f"could not load pretrained weights {pretrained!r} for {name!r}: "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}\n"
            f"Known tags for {name}: {tags or 'none'}. " + _offline_advice(name)
        ) from None
    return clip, tokenizer


class TokenizerUnavailable(RuntimeError):
    """Raised when a model's tokenizer cannot be had (a Hugging Face tokenizer, not cached, no network)."""


class _UnavailableTokenizer:
    """Stands in for a tokenizer that could not be loaded, on the meta device only (shapes, nothing
    is tokenized there): any use raises the loading error."""

    def __init__(self, message: str):
        self.message = message

    def __call__(self, *args, **kwargs):
        raise TokenizerUnavailable(self.message)

    def __getattr__(self, name):
        if name.startswith("__"):  # copy, pickle and friends probe these
            raise AttributeError(name)
        raise TokenizerUnavailable(self.message)


def _load_tokenizer(name: str, meta: bool = False):
    """open_clip's tokenizer of ``name``. OpenAI's BPE ships with open_clip; a Hugging Face
    tokenizer (SigLIP, CLIPA, ...) is read from the Hugging Face cache, or downloaded where the hub
    answers. Where neither works, :class:`TokenizerUnavailable` at once (not after the hub client's
    minute of retries), saying how to provide it offline."""
    import open_clip

    hub = ((open_clip.get_model_config(name) or {}).get("text_cfg") or {}).get("hf_tokenizer_name")
    if hub is None or os.path.isdir(hub):  # shipped with open_clip, or a local folder
        return open_clip.get_tokenizer(name)
    from huggingface_hub import constants, try_to_load_from_cache

    offline = bool(constants.HF_HUB_OFFLINE)
    cached = isinstance(try_to_load_from_cache(hub, "tokenizer_config.json"), str)
    reason = None
    if not cached:
        reason = "offline mode is on (HF_HUB_OFFLINE=1)" if offline else _unreachable(constants.ENDPOINT)
    if reason is None:
        constants.HF_HUB_OFFLINE = offline or cached  # a cached copy is read without asking the hub
        try:
            return open_clip.get_tokenizer(name)
        except Exception as error:
            reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        finally:
            constants.HF_HUB_OFFLINE = offline
    message = (
        f"the tokenizer of {name!r} cannot be loaded: it is the Hugging Face tokenizer {hub!r}, which is "
        f"not in this machine's Hugging Face cache and cannot be downloaded here ({reason}). To use "
        f"{name} offline, load it once on a machine with network (python -c \"from transformers import "
        f"AutoTokenizer; AutoTokenizer.from_pretrained('{hub}')\"), copy that machine's Hugging Face "
        f"cache (~/.cache/huggingface/hub, or $HF_HUB_CACHE) to the same place here, and set HF_HUB_OFFLINE=1."
    )
    if meta:
        return _UnavailableTokenizer(message)
    raise TokenizerUnavailable(message)


def load_clip_weights(clip: nn.Module, path: Union[str, Path]) -> None:
    """Load an open_clip/OpenAI checkpoint file into ``clip`` (strict), with a clear error."""
    import open_clip

    try:
        open_clip.load_checkpoint(clip, str(path), strict=True)
    except Exception as error:
        raise PretrainedWeightsUnavailable(
            f"{path}: not a CLIP checkpoint for this architecture ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''})"
        ) from None


class STZSARModel(nn.Module):
    """CLIP encoders + STI. ``forward(video [B, T, 3, H, W], class_bank) -> logits [B, C]``."""

    def __init__(self, video: VideoEncoder, text: TextEncoder, sti: STIModule, logit_scale: float,
                 config: ModelConfig):
        super().__init__()
        self.video = video
        self.text = text
        self.sti = sti
        # CLIP's learned temperature, kept fixed like the text tower.
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))
        self.config = config

    @property
    def dim(self) -> int:
        return self.sti.dim

    @property
    def image_size(self) -> int:
        size = self.video.visual.image_size
        return size[0] if isinstance(size, (tuple, list)) else int(size)

    @property
    def image_mean(self) -> Tuple[float, float, float]:
        """Per-channel mean of the input normalisation (RGB, on [0, 1] pixels): the one open_clip
        records for these weights (OpenAI CLIP's when it records none)."""
        from open_clip.constants import OPENAI_DATASET_MEAN

        return tuple(float(v) for v in (getattr(self.video.visual, "image_mean", None) or OPENAI_DATASET_MEAN))

    @property
    def image_std(self) -> Tuple[float, float, float]:
        """Per-channel standard deviation of the input normalisation (see :attr:`image_mean`)."""
        from open_clip.constants import OPENAI_DATASET_STD

        return tuple(float(v) for v in (getattr(self.video.visual, "image_std", None) or OPENAI_DATASET_STD))

    def check_input(self, video: Tensor) -> None:
        """Raise a clear error unless ``video`` has the shape and type :meth:`forward` takes (the
        encoder would otherwise fail deep inside on a size mismatch)."""
        size = self.image_size
        expected = f"[B, T, 3, {size}, {size}]"
        how = ("stzsar.video_input(path_or_frames, model, num_frames) makes it from a video file or "
               "from frames in memory")
        if not isinstance(video, Tensor):
            raise TypeError(f"the model's input must be a tensor {expected}, got {type(video).__name__}; {how}")
        shape = list(video.shape)
        if video.dim() != 5 or shape[2] != 3 or shape[-2:] != [size, size] or 0 in shape[:2]:
            hint = ""
            if video.dim() == 4 and shape[1] == 3:
                hint = " (one video? add the batch dimension: video.unsqueeze(0))"
            elif video.dim() == 5 and shape[-1] == 3:
                hint = " (channels last? the frames must be [3, H, W]: video.permute(0, 1, 4, 2, 3))"
            elif video.dim() == 5 and shape[2] == 3 and shape[-2:] != [size, size]:
                hint = f" (frames of {shape[-2]}x{shape[-1]}; this model takes {size}x{size})"
            raise ValueError(
                f"the model's input must be {expected}: B videos of T RGB frames at this model's image "
                f"size {size}x{size}, normalised with model.image_mean and model.image_std; got "
                f"{shape}{hint}; {how}")
        if not video.is_floating_point():
            raise TypeError(f"the model's input must be floating point (normalised pixels), got {video.dtype}; {how}")

    def encode_classes(
        self,
        class_names: Sequence[str],
        attributes: Optional[Dict[str, List[str]]] = None,
    ) -> ClassBank:
        """Prompts ``template.format(name, attributes...)`` through the frozen text encoder."""
        prompts = build_prompts(
            class_names, attributes, template=self.config.template,
            context_length=self.text.context_length, tokenizer=self.text.vocabulary,
        )
        return self.text([p.text for p in prompts])

    def encode_video(self, video: Tensor):
        """``(frames [B, T, D], patches [B, T, Np, D])`` of ``video`` (see :meth:`forward`)."""
        self.check_input(video)
        return self.video(video)

    def logits_from_features(self, frames: Tensor, patches: Tensor, bank: ClassBank) -> Tensor:
        bank_device = bank.words.device
        if bank_device != frames.device:
            bank = bank.to(frames.device)
        cosine = self.sti.similarity(frames, patches, bank.words.to(frames.dtype), bank.word_mask,
                                     bank.class_emb.to(frames.dtype))
        return self.logit_scale * cosine

    def forward(self, video: Tensor, bank: ClassBank) -> Tensor:
        """Logits ``[B, C]`` of ``B`` videos against the ``C`` classes of ``bank``.

        Args:
            video: ``[B, T, 3, S, S]`` floating point (float32, or the model's dtype; bf16/fp16
                under autocast): ``B`` videos of ``T`` RGB frames each (any ``T >= 1``; the
                paper samples 16, the middle frame of ``T`` equal segments), ``S`` =
                :attr:`image_size`, pixels scaled to [0, 1] and then normalised per channel with
                :attr:`image_mean` and :attr:`image_std`. :func:`stzsar.video_input` makes it from
                a video file or frames in memory; a wrong shape raises a ``ValueError`` that says
                what is expected.
            bank: the class texts encoded by :meth:`encode_classes`.

        Returns:
            ``logit_scale * cosine``; ``softmax(-1)`` gives class probabilities.
        """
        frames, patches = self.encode_video(video)
        return self.logits_from_features(frames, patches, bank)

    def trainable_state_dict(self) -> Dict[str, Tensor]:
        """Only the parameters that learn (the rest is the public CLIP checkpoint)."""
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k in trainable}


def build_model(
    name: str = "ViT-B-16",
    pretrained: Optional[str] = None,
    *,
    frozen_blocks: Optional[int] = None,
    temporal_layers: int = 0,
    temperature: float = 0.01,
    normalize: bool = True,
    template: str = DEFAULT_TEMPLATE,
    word_tokens: str = "class_and_attributes",
    backend: str = "auto",
    image_size: Optional[int] = None,
    spatial_interaction: bool = True,
    temporal_interaction: bool = True,
    device: Union[str, torch.device] = "cpu",
) -> STZSARModel:
    """Build the model around an open_clip architecture.

    Args:
        name: open_clip architecture (``ViT-B-16``, ``ViT-L-14``, ...) or ``stzsar-tiny``/``stzsar-small``.
        pretrained: open_clip pretrained tag (e.g. ``"openai"``; downloaded by open_clip where the
            machine can) or the path of a local CLIP checkpoint; ``None`` for random weights.
        frozen_blocks: lower ViT blocks kept frozen (``None``: the first half).
        temporal_layers: layers of the optional temporal transformer over frame embeddings.
        temperature, normalize, backend: see :class:`stzsar.STIModule`.
        template: prompt template.
        word_tokens: which prompt tokens count as words in the STI matches
            (``"class_and_attributes"`` or ``"sentence"``, see :mod:`stzsar.text.encoder`).
        spatial_interaction, temporal_interaction: the STI's two steps (both off: mean pooling);
            see :class:`stzsar.STIModule`.
    """
    config = ModelConfig(name, pretrained, frozen_blocks, temporal_layers, temperature, normalize,
                         template, word_tokens, backend, image_size, spatial_interaction,
                         temporal_interaction)
    return build_model_from_config(config, device=device)


def build_model_from_config(config: ModelConfig, device: Union[str, torch.device] = "cpu") -> STZSARModel:
    # device="meta" builds shapes only, no weights and no memory (FLOP counting in
    # benchmarks/flops.py): every tensor is then created on the meta device directly.
    meta = torch.device(device).type == "meta"
    if meta and config.pretrained:
        raise ValueError(f"pretrained weights {config.pretrained!r} cannot be loaded on the meta device; "
                         f"pass pretrained=None")
    with torch.device("meta") if meta else contextlib.nullcontext():
        clip, tokenizer = _create_clip(config.name, config.pretrained, config.image_size, meta=meta)
        video = VideoEncoder(clip.visual, config.frozen_blocks, config.temporal_layers)
        text = TextEncoder.from_clip(clip, tokenizer, template=config.template,
                                     word_tokens=config.word_tokens)
        if video.dim != text.dim:
            raise ValueError(f"image and text towers disagree on the embedding size: {video.dim} vs {text.dim}")
        sti = STIModule(video.dim, temperature=config.temperature, normalize=config.normalize,
                        backend=config.backend, spatial=config.spatial_interaction,
                        temporal=config.temporal_interaction)
        # A meta tensor has no value to read; 100 (trained CLIP's clamped scale) changes no shape or flop.
        scale = 100.0 if meta else float(clip.logit_scale.detach().exp().clamp(max=100.0))
        model = STZSARModel(video, text, sti, scale, config)
    return model.to(device)


def model_config_dict(model: STZSARModel) -> dict:
    return asdict(model.config)
