"""The published MaxSim kernels (flash-maxsim, late-interaction-kernels) on the spatial op's shapes,
through ``benchmarks/peers.py``: their per-word maxima against an independent float64 loop, our op
against the max of their per-word maxima, the benchmark's timed form (sums over the valid words)
and its gradients against float64 loops, and ``benchmarks.kernels --peers``.

Features are multiples of 1/64 in [-1, 1] (exact in float32, float16, bfloat16 and TF32), so every
dot product of D = 16..24 of them is exact in a float32 accumulator, and so is every sum below: the
comparisons are exact whatever the summation order. Without a GPU the peers run in Triton's
interpreter (``tests/conftest.py`` sets ``TRITON_INTERPRET=1``), where their backward passes and
bfloat16 cannot run (each case says why); with a GPU everything runs compiled on CUDA tensors.

A peer that is not installed skips its cases, unless ``STZSAR_REQUIRE_PEERS=1`` (CI), which makes
that a failure: both are pinned in ``requirements.txt``.
"""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch

pytest.importorskip("triton", reason="the peers are Triton kernels and Triton is not installed")

from benchmarks import peers  # noqa: E402
from stzsar.ops import available_backends, spatial_maxsim  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if DEVICE.type == "cpu" and not peers.interpreting():
    pytest.skip("no GPU and TRITON_INTERPRET is not 1: the peers' Triton kernels cannot run here", allow_module_level=True)
REQUIRE = os.environ.get("STZSAR_REQUIRE_PEERS") == "1"

# (B, T, Np, C, Nw, D). "small": the peers' small-input paths (flash-maxsim's fixed-tile kernel,
# late-interaction-kernels' autotune bypass); "wide": 504 (class, frame) pairs, past both peers'
# limit of 500, so the classes-as-queries form runs their autotuned kernels (the interpreter runs
# one program per pair, so the per-word form, with Nw times as many, stays at "small").
SHAPES = {"small": (2, 3, 7, 3, 5, 24), "wide": (3, 6, 5, 28, 3, 16)}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def require(name: str) -> str:
    try:
        peers.load(name)
    except peers.PeerUnavailable as error:
        if REQUIRE:
            pytest.fail(f"STZSAR_REQUIRE_PEERS=1 but {error}")
        pytest.skip(str(error))
    return name


@pytest.fixture(params=list(peers.PEERS))
def peer(request) -> str:
    return require(request.param)


@pytest.fixture(autouse=True)
def one_candidate():
    """The peers' autotuners run their first candidate untimed: the interpreter cannot time
    candidates, and on a GPU these checks need one compile per kernel, not one per candidate."""
    with peers.first_config_only():
        yield


def skip_interpreter_bf16(dtype: torch.dtype) -> None:
    if dtype == torch.bfloat16 and DEVICE.type == "cpu":
        pytest.skip(
            "Triton's interpreter computes bfloat16 dots wrongly (errors of 1e10 on exact inputs) and "
            "the peers' kernels cannot be upcast from outside; bfloat16 runs on a GPU"
        )


def grid(shape, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(-64, 65, shape, generator=gen).double() / 64


def make(shape_name: str, seed: int = 0):
    """Features, a ragged mask (not a prefix: masked words sit between valid ones, one class keeps a
    single word) and an upstream gradient, all float64 on the CPU."""
    B, T, Np, C, Nw, D = SHAPES[shape_name]
    gen = torch.Generator().manual_seed(seed)
    patches, words = grid((B, T, Np, D), gen), grid((C, Nw, D), gen)
    mask = torch.rand(C, Nw, generator=gen) < 0.6
    mask[0] = False
    mask[0, Nw // 2] = True
    mask[1] = True
    grad = grid((B, C, T), gen)
    return patches, words, mask, grad


# --------------------------------------------------------------------------------------------
# Independent float64 reference: explicit loops over the equations
# --------------------------------------------------------------------------------------------


def reference_per_word(patches: torch.Tensor, words: torch.Tensor):
    """``M[b, c, t, l] = max_k <P[b, t, k], W[c, l]>`` and its patch ``k`` (first on ties), and
    whether the max is unique (the gradient cases need unique winners)."""
    B, T, Np, _ = patches.shape
    C, Nw, _ = words.shape
    M = torch.empty(B, C, T, Nw, dtype=torch.float64)
    K = torch.empty(B, C, T, Nw, dtype=torch.long)
    unique = True
    for b in range(B):
        for t in range(T):
            for c in range(C):
                for l in range(Nw):
                    dots = [float(torch.dot(patches[b, t, k], words[c, l])) for k in range(Np)]
                    best = max(dots)
                    M[b, c, t, l] = best
                    K[b, c, t, l] = dots.index(best)
                    unique &= dots.count(best) == 1
    return M, K, unique


def reference_sum_grads(patches, words, mask, grad, K):
    """Gradients of ``sum_{b,c,t} grad[b,c,t] * sum over valid l of M[b,c,t,l]``: each valid word's
    winner patch receives ``grad * W[c, l]``, the word ``grad * P[b, t, winner]``."""
    B, C, T, Nw = K.shape
    gp = torch.zeros_like(patches)
    gw = torch.zeros_like(words)
    for b in range(B):
        for c in range(C):
            for t in range(T):
                for l in range(Nw):
                    if mask[c, l]:
                        k = int(K[b, c, t, l])
                        gp[b, t, k] += grad[b, c, t] * words[c, l]
                        gw[c, l] += grad[b, c, t] * patches[b, t, k]
    return gp, gw


# --------------------------------------------------------------------------------------------
# The peers' per-word maxima, and ours
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_per_word_maxima_equal_reference_and_ours(peer, dtype):
    skip_interpreter_bf16(dtype)
    patches, words, mask, _ = make("small")
    M_ref, _, _ = reference_per_word(patches, words)
    p, w = patches.to(DEVICE, dtype), words.to(DEVICE, dtype)

    M = peers.per_word_maxima(peer, p, w).double().cpu()
    assert M.shape == M_ref.shape
    assert torch.equal(M, M_ref), f"{peer}: largest error {float((M - M_ref).abs().max())}"

    # Our op is the max over the valid words of the same maxima, on every backend here.
    C, Nw = mask.shape
    best_valid = M.masked_fill(~mask.view(1, C, 1, Nw), float("-inf")).amax(-1)
    for backend in available_backends(DEVICE):
        ours = spatial_maxsim(p, w, mask.to(DEVICE), backend=backend).double().cpu()
        assert torch.equal(ours, best_valid), f"ours ({backend}) vs max of {peer}'s per-word maxima"


@pytest.mark.parametrize("shape,dtype", [("small", d) for d in DTYPES] + [("wide", torch.float32)], ids=str)
def test_word_sums_the_timed_form(peer, shape, dtype):
    """Classes as queries with the word mask: the sum over the valid words of the per-word maxima,
    both through ``word_sums`` and through the closure the benchmark times."""
    skip_interpreter_bf16(dtype)
    patches, words, mask, grad = make(shape)
    M_ref, _, _ = reference_per_word(patches, words)
    R_ref = (M_ref * mask.view(1, mask.shape[0], 1, mask.shape[1])).sum(-1)
    p, w, m = patches.to(DEVICE, dtype), words.to(DEVICE, dtype), mask.to(DEVICE)

    R = peers.word_sums(peer, p, w, m).double().cpu()
    assert torch.equal(R, R_ref), f"{peer}: largest error {float((R - R_ref).abs().max())}"

    if shape == "small":  # the closure's call is the same; once is enough in the interpreter
        B, T = patches.shape[:2]
        timed = peers.timed_call(peer, p, w, m, grad.to(DEVICE), backward=False)()
        assert torch.equal(peers.scores_to_bct(timed, B, T).double().cpu(), R_ref)


def backward_paths(name: str):
    if name == "flash-maxsim":
        # On CPU tensors only the two paths that need no CUDA device query run.
        return ["atomic", "invgrid"] if DEVICE.type == "cpu" else ["auto", "atomic", "invgrid"]
    return ["auto"]


def test_word_sums_gradients(peer, monkeypatch):
    """Both peers' training forward saves the winners and so always takes their autotuned kernel."""
    if DEVICE.type == "cpu" and peer == "late-interaction-kernels":
        pytest.skip(f"{peer} on CPU tensors: {peers.PEERS[peer].cpu_backward}; its backward runs on a GPU")
    patches, words, mask, grad = make("small", seed=3)
    _, K, unique = reference_per_word(patches, words)
    assert unique, "the inputs have a tied maximum; choose another seed"
    gp_ref, gw_ref = reference_sum_grads(patches, words, mask, grad, K)
    for path in backward_paths(peer):
        monkeypatch.setenv("FLASH_BWD_PATH", path)
        p = patches.to(DEVICE, torch.float32).requires_grad_(True)
        w = words.to(DEVICE, torch.float32).requires_grad_(True)
        R = peers.word_sums(peer, p, w, mask.to(DEVICE))
        (R * grad.to(DEVICE, torch.float32)).sum().backward()
        assert torch.equal(p.grad.double().cpu(), gp_ref), f"{peer} ({path}): patch gradient"
        assert torch.equal(w.grad.double().cpu(), gw_ref), f"{peer} ({path}): word gradient"

        # The benchmark's closure runs the same backward (the gradient enters as [C, B*T]).
        fn = peers.timed_call(peer, p.detach(), w.detach(), mask.to(DEVICE), grad.to(DEVICE, torch.float32), backward=True)
        fn()


# --------------------------------------------------------------------------------------------
# Errors and the benchmark
# --------------------------------------------------------------------------------------------


def test_missing_peer_names_the_install_command(monkeypatch):
    gone = dataclasses.replace(peers.PEERS["flash-maxsim"], module="flash_maxsim_not_installed_here")
    monkeypatch.setitem(peers.PEERS, "flash-maxsim", gone)
    with pytest.raises(peers.PeerUnavailable, match=r"pip install flash-maxsim==0\.3\.0 late-interaction-kernels==0\.4\.5"):
        peers.load("flash-maxsim")
    assert "flash-maxsim" not in peers.installed()

    from benchmarks import kernels

    with pytest.raises(SystemExit, match="--peers: flash-maxsim is not importable"):
        kernels.main(["--shape", "tiny", "--device", DEVICE.type, "--backends", "naive", "--no-memory", "--no-check",
                      "--warmup", "0", "--repeats", "1", "--peers", "--json-out", os.devnull])


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(peers.PeerUnavailable, match="TRITON_INTERPRET=1"):
        peers.check_device("flash-maxsim", torch.zeros(1))


def test_benchmark_reports_the_peers(tmp_path):
    for name in peers.PEERS:
        require(name)
    from benchmarks import kernels

    out = tmp_path / "kernels.json"
    ours = "cpu" if DEVICE.type == "cpu" else "triton"
    code = kernels.main(["--shape", "tiny", "--device", DEVICE.type, "--dtype", "float32", "--backends", f"{ours},naive",
                         "--no-memory", "--warmup", "0", "--repeats", "1", "--peers", "--json-out", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    rows = data["rows"]
    for name in peers.PEERS:
        assert data["peers"][name]["version"] == peers.PEERS[name].pin
        assert data["peers"][name]["check"]["ok"], data["peers"][name]["check"]
        fwd = next(r for r in rows if r["backend"] == name and r["mode"] == "fwd")
        assert fwd["peer"] and fwd["time_s"] > 0 and fwd["check"].startswith("ok")
        bwd = next(r for r in rows if r["backend"] == name and r["mode"] == "fwd+bwd")
        if DEVICE.type == "cpu":
            assert "time_s" not in bwd and bwd["note"].startswith("not run: ")
        else:
            assert bwd["time_s"] > 0
    for row in rows:
        if row["backend"] == ours and row.get("time_s"):
            timed_peers = [r for r in rows if r.get("peer") and r["mode"] == row["mode"] and r.get("time_s")]
            assert row.get("vs_peer") == ({r["backend"]: r["time_s"] / row["time_s"] for r in timed_peers} or None)
    assert not any("vs_peer" in r for r in rows if r["backend"] not in ("cpu", "cuda", "triton"))
