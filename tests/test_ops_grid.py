"""Launch grids of the GPU kernels stay within CUDA's limits at any class count the other limits
allow (65,536 classes of more than 64 words overflowed grid axis y of the Triton temporal kernels),
and a grid past the limits is a clear error. No GPU needed: the grids are computed, not launched.

CUDA's limits, from the CUDA programming guide: a grid has at most 2^31 - 1 blocks on axis x and
65,535 on axes y and z.
"""

from __future__ import annotations

import math

import pytest
import torch

LIMITS = (2**31 - 1, 65535, 65535)

# Kinetics-400 evaluation (B=32, T=16, ViT-B/16 Np=196, D=512) with 70,000 classes of 77 words.
B, T, NP, D = 32, 16, 196, 512
MANY_CLASSES, LONG_WORDS = 70_000, 77


def within_limits(grid) -> bool:
    return 1 <= len(grid) <= 3 and all(0 <= size <= limit for size, limit in zip(grid, LIMITS))


def test_triton_temporal_grids_take_70000_classes():
    K = pytest.importorskip("stzsar.kernels.sti_temporal", reason="Triton is not installed")
    blocks = K._temporal_blocks(T, LONG_WORDS, D)
    class_blocks = math.ceil(MANY_CLASSES / blocks["CB"])
    assert class_blocks > LIMITS[1]  # more class blocks than axis y takes
    grid = K.video_block_grid(B, class_blocks, "temporal_saliency")
    assert within_limits(grid) and math.prod(grid) == B * class_blocks
    similarity_blocks = math.ceil(MANY_CLASSES / K._similarity_blocks(T, D)["CBZ"])
    grid = K.video_block_grid(B, similarity_blocks, "sti_similarity")
    assert within_limits(grid) and math.prod(grid) == B * similarity_blocks


def test_triton_spatial_grids_take_70000_classes():
    S = pytest.importorskip("stzsar.kernels.spatial_maxsim", reason="Triton is not installed")
    M = B * T * NP
    nwp = 128  # 77 words padded to a power of two
    configs = [dict(c.kwargs) for family in S._FWD_CONFIGS.values() for c in family] + [S._INTERPRET_FWD]
    for meta in configs:
        grid = S.forward_grid(M, MANY_CLASSES, nwp, meta)
        classes_per_program = max(1, meta["BLOCK_N"] // nwp)
        assert within_limits(grid), meta
        assert math.prod(grid) == math.ceil(M / meta["BLOCK_M"]) * math.ceil(MANY_CLASSES / classes_per_program)
    for segment in (S._GPU_SEGMENT, S._INTERPRET_SEGMENT):
        block_r, _, block_d = segment
        for rows in (M, MANY_CLASSES * LONG_WORDS):  # dP rows, dW rows
            grid = S.segment_grid(rows, D, block_r, block_d)
            assert within_limits(grid) and grid[0] * block_r >= rows and grid[1] * block_d >= D


def test_triton_grid_past_the_limits_is_a_clear_error():
    S = pytest.importorskip("stzsar.kernels.spatial_maxsim", reason="Triton is not installed")
    K = pytest.importorskip("stzsar.kernels.sti_temporal", reason="Triton is not installed")
    with pytest.raises(ValueError, match=r"temporal_saliency: 2147483648 programs on grid axis x exceed CUDA's "
                                         r"limit of 2147483647; score fewer videos x classes per call"):
        K.video_block_grid(2**16, 2**15, "temporal_saliency")
    with pytest.raises(ValueError, match="grid axis y exceed CUDA's limit of 65535"):
        S.segment_grid(10, 65536 * 256, 1, 256)
    assert S.checked_grid((LIMITS[0], LIMITS[1]), "k", "") == (LIMITS[0], LIMITS[1])


# The CUDA launchers compute their grids in C++; the extension exposes those very functions.
def _cuda_launch_grid():
    from stzsar import _extension

    ext = _extension.load_extension()
    if ext is None or not hasattr(ext, "cuda_launch_grid"):
        pytest.skip("stzsar._C was built without its CUDA kernels: their launch grids are not compiled in")
    return ext.cuda_launch_grid


def test_cuda_grids_take_70000_classes():
    grid_of = _cuda_launch_grid()
    sizes = dict(B=B, C=MANY_CLASSES, T=T, Np=NP, Nw=LONG_WORDS, D=D)
    for kernel in ("spatial_forward", "spatial_grad_patches", "spatial_grad_words", "temporal", "similarity"):
        grid = grid_of(kernel, **sizes)
        assert within_limits(grid), (kernel, grid)
    # Each covers its work: every (frame, class), every frame and class by 128 features, every
    # (video, class).
    x, y, _ = grid_of("temporal", **sizes)
    assert y == B and x >= math.ceil(MANY_CLASSES / 128)  # at most 128 word columns per block
    assert grid_of("spatial_grad_words", **sizes) == (MANY_CLASSES, math.ceil(D / 128), 1)
    assert grid_of("spatial_grad_patches", **sizes) == (B * T, math.ceil(D / 128), 1)
    assert grid_of("similarity", **sizes) == (math.ceil(MANY_CLASSES / 32), B, 1)
    assert grid_of("spatial_forward", **sizes)[0] >= B * T * math.ceil(MANY_CLASSES * LONG_WORDS / 256)


def test_cuda_grid_limits_that_remain_are_named():
    """The temporal kernels keep the videos on axis y: more than 65,535 videos in one call is a
    clear error (checked before any launch), not an opaque launch failure."""
    grid_of = _cuda_launch_grid()
    assert not within_limits(grid_of("temporal", B=70_000, C=4, T=4, Np=1, Nw=4, D=8))
    with pytest.raises(RuntimeError, match="unknown kernel 'attention'"):
        grid_of("attention", B=1, C=1, T=1, Np=1, Nw=1, D=1)
    if not torch.cuda.is_available():
        pytest.skip("the error itself is raised by the CUDA op, which needs a GPU")
    s_sp = torch.rand(70_000, 1, 2, device="cuda")
    frames = torch.randn(70_000, 2, 8, device="cuda")
    words = torch.randn(1, 2, 8, device="cuda")
    mask = torch.ones(1, 2, dtype=torch.bool, device="cuda")
    with pytest.raises(RuntimeError, match="at most 65535 videos per call"):
        torch.ops.stzsar.temporal_saliency_fused_fwd(s_sp, frames, words, mask, 0.1)
