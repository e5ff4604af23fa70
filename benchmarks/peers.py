"""The published late-interaction MaxSim kernels, mapped onto the spatial op's shapes.

Late-interaction retrieval (ColBERT, ColPali) scores a (query, document) pair by the sum over the
query tokens of the max over the document tokens of their dot products. The spatial op
``stzsar::spatial_maxsim`` is the same similarity volume with a class's words as the query tokens
and one frame's patches as the document tokens; it takes a max over the words where retrieval sums:

    M[b, c, t, l] = max_k <P[b, t, k], W[c, l]>          per-word maxima
    ours:   S[b, c, t] = max over valid l of M[b, c, t, l]
    peers:  R[b, c, t] = sum over valid l of M[b, c, t, l]

Neither peer returns ``M`` nor reduces the query tokens by a max, so two mappings are used:

- :func:`per_word_maxima`: each word is a query of one token, so the peer's score *is*
  ``M[b, c, t, l]``. The peers pad a one-token query to their smallest tile of query rows (16 or
  32), so this form is for checking, never for timing.
- :func:`word_sums` and :func:`timed_call`: each class is a query of ``Nw`` tokens (the word mask
  as the peer's query mask), each frame a document of ``Np`` tokens, which gives ``R``. The peer
  forms exactly the dot products our op forms (``B*T*Np x C*Nw x D``) in the same tile loop; only
  the last reduction over the words differs (a sum of ``Nw`` floats per output, against our max).
  This is the form the benchmark times.

The peers (``PEERS``): ``flash-maxsim`` 0.3.0 and ``late-interaction-kernels`` 0.4.5, pure-Python
wheels of Triton kernels, pinned in ``requirements.txt`` and the ``[bench]`` extra; never a
dependency of the package. They run on CUDA tensors, and on CPU tensors only in Triton's
interpreter (``TRITON_INTERPRET=1`` set before they are imported), where their backward passes
cannot run (``Peer.cpu_backward``) and their autotuners cannot time candidates (no GPU driver), so
there :func:`interpreter_first_config` makes each autotuned kernel take the first candidate the
peer's own pruning keeps.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor


@dataclass(frozen=True)
class Peer:
    name: str  # the distribution on the package index
    short: str  # its name in the benchmark's table
    module: str  # its import name
    pin: str  # the version requirements.txt tests
    api: str  # the entry points this module calls, and how our shapes map onto them
    cpu_backward: Optional[str]  # None: the backward runs on CPU tensors (interpreter); else why not


PEERS: Dict[str, Peer] = {
    "flash-maxsim": Peer(
        name="flash-maxsim",
        short="flash",
        module="flash_maxsim",
        pin="0.3.0",
        api=(
            "flash_maxsim_batched(Q [Nq, Lq, d], D [B, Ld, d], shared_docs=True, query_lengths) -> [Nq, B] "
            "(forward) and flash_maxsim_batched_train (autograd); queries are the classes with their "
            "valid words moved to the front and the rest zeroed (the API masks a prefix of each query by "
            "its length, and 0.3.0 ignores the length on its small-input forward path)"
        ),
        cpu_backward=(
            "its default backward path (atomic_unified) reads torch.cuda.get_device_properties for its "
            "launch configuration; FLASH_BWD_PATH=atomic or invgrid runs on CPU tensors"
        ),
    ),
    "late-interaction-kernels": Peer(
        name="late-interaction-kernels",
        short="lik",
        module="late_interaction_kernels",
        pin="0.4.5",
        api=(
            "maxsim(Q [Nq, Lq, d], D [Nd, Ld, d], q_mask=[Nq, Lq] bool) -> [Nq, Nd], autograd-aware, "
            "backward='auto'; queries are the classes, the word mask is the query mask as it is"
        ),
        cpu_backward="its backward raises 'maxsim_backward_unified requires CUDA tensors' (also the lowmem path)",
    ),
}

INSTALL_HINT = "pip install " + " ".join(f"{p.name}=={p.pin}" for p in PEERS.values()) + " (or the [bench] extra)"

# What the benchmark's rows say was compared.
COMPARED = (
    "same similarity volume (B*T*Np x C*Nw x D): classes as queries of Nw word tokens, frames as "
    "documents of Np patch tokens; the peer sums the per-word maxima over the valid words where our "
    "op takes their max"
)


class PeerUnavailable(RuntimeError):
    """A peer is not installed, or cannot run on the given tensors here."""


def version(name: str) -> Optional[str]:
    """The installed version of peer ``name``, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def load(name: str):
    """The peer's module; :class:`PeerUnavailable` naming the install command when it is missing."""
    peer = PEERS[name]
    try:
        return importlib.import_module(peer.module)
    except ImportError as error:
        raise PeerUnavailable(f"{name} is not importable ({error}); {INSTALL_HINT}") from error


def installed() -> List[str]:
    """The peers that import here."""
    out = []
    for name in PEERS:
        try:
            load(name)
        except PeerUnavailable:
            continue
        out.append(name)
    return out


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_device(name: str, tensor: Tensor) -> None:
    """The peers' kernels are Triton: CUDA tensors, or CPU tensors under the interpreter."""
    if tensor.device.type == "cuda":
        return
    if tensor.device.type == "cpu" and interpreting():
        return
    raise PeerUnavailable(
        f"{name} runs Triton kernels: pass CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set "
        f"before {PEERS[name].module} is imported (slow; tiny shapes only); got {tensor.device}"
    )


@contextlib.contextmanager
def interpreter_first_config(active: bool = True):
    """Under the interpreter, every Triton autotuner keeps only the first candidate the peer's own
    pruning keeps: timing candidates needs a GPU driver (``RuntimeError: 0 active drivers``), and
    a single candidate is run without timing. Nothing changes on a GPU."""
    if not (active and interpreting()):
        yield
        return
    with first_config_only():
        yield


@contextlib.contextmanager
def first_config_only():
    """Every Triton autotuner runs the first candidate its pruning keeps, untimed (correctness
    checks on a GPU: one compile per kernel instead of one per candidate)."""
    from triton.runtime.autotuner import Autotuner

    original = Autotuner.prune_configs

    def first_only(self, kwargs):
        return original(self, kwargs)[:1]

    Autotuner.prune_configs = first_only
    try:
        yield
    finally:
        Autotuner.prune_configs = original


@contextlib.contextmanager
def _quiet():
    # late-interaction-kernels warns once when the queries are not unit vectors (ColBERT models
    # normalise); the checks use exactly representable, unnormalised features on purpose.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*median L2 norm.*")
        yield


# --------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------


def _check_shapes(patches: Tensor, words: Tensor, word_mask: Optional[Tensor]) -> None:
    if patches.dim() != 4 or words.dim() != 3 or patches.shape[-1] != words.shape[-1]:
        raise ValueError(
            f"expected patches [B, T, Np, D] and words [C, Nw, D] with one D; got {tuple(patches.shape)} "
            f"and {tuple(words.shape)}"
        )
    if word_mask is not None and (word_mask.dtype != torch.bool or tuple(word_mask.shape) != tuple(words.shape[:2])):
        raise ValueError(f"expected word_mask [C, Nw] bool; got {tuple(word_mask.shape)} {word_mask.dtype}")
    if patches.dtype not in (torch.float32, torch.float16, torch.bfloat16) or words.dtype not in (
        torch.float32,
        torch.float16,
        torch.bfloat16,
    ):
        raise TypeError(f"the peers take float32/float16/bfloat16 features; got {patches.dtype} and {words.dtype}")


def _common(patches: Tensor, words: Tensor) -> Tuple[Tensor, Tensor]:
    # Like our op: both read in their common dtype (the peers' tl.dot needs one dtype).
    dtype = torch.promote_types(patches.dtype, words.dtype)
    return patches.to(dtype), words.to(dtype)


def frames_as_documents(patches: Tensor) -> Tensor:
    """``[B, T, Np, D] -> [B*T, Np, D]``: one document per frame (a view of contiguous patches)."""
    B, T, Np, D = patches.shape
    return patches.reshape(B * T, Np, D)


def valid_words_first(words: Tensor, word_mask: Tensor) -> Tuple[Tensor, Tensor]:
    """Each class's valid words moved to the front (their order kept), the slots behind them
    zeroed, and the count per class (int32), for an API that masks a query by its length.
    Differentiable in ``words``.

    The zeros matter: flash-maxsim 0.3.0's forward ignores ``query_lengths`` on its small-input
    path (``Nq * B < 500``, ``d <= 512``, no saved winners) and sums every query row; a zero row's
    max is exactly 0, so the sum is right on every path."""
    order = torch.sort((~word_mask).to(torch.int8), dim=1, stable=True).indices
    front = torch.gather(words, 1, order.unsqueeze(-1).expand(-1, -1, words.shape[-1]))
    counts = word_mask.sum(dim=1)
    keep = torch.arange(words.shape[1], device=words.device).view(1, -1) < counts.view(-1, 1)
    return front * keep.unsqueeze(-1).to(front.dtype), counts.to(torch.int32)


def scores_to_bct(scores: Tensor, B: int, T: int) -> Tensor:
    """The peers' ``[C, B*T]`` (queries x documents) as our ``[B, C, T]``."""
    C = scores.shape[0]
    return scores.view(C, B, T).permute(1, 0, 2)


# --------------------------------------------------------------------------------------------
# The two peers' calls: queries [Nq, Lq, D], documents [Nd, Ld, D] -> scores [Nq, Nd] (float32)
# --------------------------------------------------------------------------------------------


def _flash_maxsim(word_mask: Optional[Tensor], device: torch.device, train: bool) -> Callable[[Tensor, Tensor], Tensor]:
    """A call ``(queries, docs) -> [Nq, Nd]``; masked queries come valid words first."""
    fm = load("flash-maxsim")
    lengths = None
    if word_mask is not None:
        lengths = word_mask.sum(dim=1).to(device=device, dtype=torch.int32)
    if train:
        return lambda q, d: fm.flash_maxsim_batched_train(q, d, shared_docs=True, query_lengths=lengths)
    return lambda q, d: fm.flash_maxsim_batched(q, d, shared_docs=True, query_lengths=lengths)


def _late_interaction(word_mask: Optional[Tensor], device: torch.device) -> Callable[[Tensor, Tensor], Tensor]:
    lik = load("late-interaction-kernels")
    mask = None if word_mask is None else word_mask.to(device)
    # maxsim is autograd-aware by itself: it saves the winners only when an input needs a gradient.
    return lambda q, d: lik.maxsim(q, d, q_mask=mask)


def _prepare(name: str, patches: Tensor, words: Tensor, word_mask: Tensor, train: bool):
    """``(queries, docs, call)`` for the class-query mapping; ``call(queries, docs) -> [C, B*T]``."""
    check_device(name, patches)
    docs = frames_as_documents(patches)
    if name == "flash-maxsim":
        queries, _ = valid_words_first(words, word_mask)
        return queries, docs, _flash_maxsim(word_mask, patches.device, train)
    return words, docs, _late_interaction(word_mask, patches.device)


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def per_word_maxima(name: str, patches: Tensor, words: Tensor) -> Tensor:
    """``M [B, C, T, Nw]`` (float32) from peer ``name``: every word a query of one token. Masked
    words are scored too (the caller ignores them). Forward only."""
    _check_shapes(patches, words, None)
    check_device(name, patches)
    patches, words = _common(patches, words)
    B, T, Np, D = patches.shape
    C, Nw, _ = words.shape
    queries = words.reshape(C * Nw, 1, D)
    docs = frames_as_documents(patches)
    call = _flash_maxsim(None, patches.device, False) if name == "flash-maxsim" else _late_interaction(None, patches.device)
    with torch.no_grad(), _quiet(), interpreter_first_config(patches.device.type == "cpu"):
        scores = call(queries.contiguous(), docs.contiguous())  # [C*Nw, B*T]
    return scores.float().view(C, Nw, B, T).permute(2, 0, 3, 1)


def word_sums(name: str, patches: Tensor, words: Tensor, word_mask: Tensor) -> Tensor:
    """``R [B, C, T]`` (float32): the sum over each class's valid words of the per-word maxima, by
    the peer's own call on classes as queries (the benchmark's timed form). Runs the peer's
    training entry point, and is differentiable, when ``patches`` or ``words`` need a gradient."""
    _check_shapes(patches, words, word_mask)
    patches, words = _common(patches, words)
    B, T = patches.shape[:2]
    train = torch.is_grad_enabled() and (patches.requires_grad or words.requires_grad)
    queries, docs, call = _prepare(name, patches, words, word_mask, train)
    with _quiet(), interpreter_first_config(patches.device.type == "cpu"):
        scores = call(queries.contiguous(), docs.contiguous())
    return scores_to_bct(scores.float(), B, T)


def timed_call(name: str, patches: Tensor, words: Tensor, word_mask: Tensor, grad: Tensor, backward: bool) -> Callable[[], Any]:
    """A closure running the peer once on the class-query mapping: forward, or forward and
    backward with ``grad [B, C, T]`` as the scores' gradient. The layouts (frames as documents, a
    view; valid words first for flash-maxsim; the gradient as ``[C, B*T]``) are prepared once,
    outside the closure, as a caller holding a fixed class bank would."""
    _check_shapes(patches, words, word_mask)
    patches, words = _common(patches, words)
    queries, docs, call = _prepare(name, patches, words, word_mask, backward)
    queries, docs = queries.detach().contiguous(), docs.detach().contiguous()
    on_cpu = patches.device.type == "cpu"
    if not backward:

        def forward():
            with torch.no_grad(), interpreter_first_config(on_cpu):
                return call(queries, docs)

        return forward
    q = queries.requires_grad_(True)
    d = docs.requires_grad_(True)
    g = grad.permute(1, 0, 2).reshape(grad.shape[1], -1).float().contiguous()  # [C, B*T]

    def forward_backward():
        q.grad = d.grad = None
        with interpreter_first_config(on_cpu):
            call(q, d).backward(g)

    return forward_backward


def backward_flops(dims: Dict[str, int]) -> int:
    """The peers' winners-only backward: one winner per (frame, class, word), both gradients."""
    return 4 * dims["B"] * dims["T"] * dims["C"] * dims["Nw"] * dims["D"]


def check(name: str, patches: Tensor, words: Tensor, word_mask: Tensor, ours: Tensor, frames: int = 2) -> Dict[str, Any]:
    """The peer against a float64 reference and our op, on the first ``frames`` frames of the first
    clip (``ours``: our op's ``[B, C, T]`` scores on the same inputs). Errors are relative to the
    largest reference value; ``ok`` when each is within what the dtypes allow (the peers round
    float32 features to float16 (late-interaction-kernels) or TF32 (flash-maxsim on a GPU))."""
    p = patches[:1, :frames]
    t = p.shape[1]
    ref = torch.einsum("tkd,cld->ctlk", p[0].double(), words.double()).amax(-1).unsqueeze(0)  # [1, C, t, Nw]
    valid = word_mask.view(1, word_mask.shape[0], 1, word_mask.shape[1]).to(ref.device)
    ref_max = ref.masked_fill(~valid, float("-inf")).amax(-1)
    ref_sum = (ref * valid).sum(-1)
    M = per_word_maxima(name, p, words).double()
    R = word_sums(name, p, words, word_mask).double()
    scale = float(ref.abs().max().clamp_min(1e-12))
    err_word = float(((M - ref).abs() * valid).max()) / scale
    err_ours = float((M.masked_fill(~valid, float("-inf")).amax(-1) - ours[:1, :, :t].double()).abs().max()) / scale
    err_sum = float((R - ref_sum).abs().max()) / float(ref_sum.abs().max().clamp_min(1e-12))
    tol = 5e-3 if torch.promote_types(patches.dtype, words.dtype) == torch.float32 else 1e-4
    ok = max(err_word, err_ours, err_sum) <= tol
    text = f"{'ok' if ok else 'FAIL'} per-word {err_word:.1e}, max over words vs ours {err_ours:.1e}, word sums {err_sum:.1e}"
    return {"ok": ok, "text": text, "per_word": err_word, "vs_ours": err_ours, "word_sums": err_sum, "tol": tol, "frames": t}
