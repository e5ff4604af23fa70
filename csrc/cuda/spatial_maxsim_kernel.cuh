// Plain CUDA launchers of the fused spatial max-similarity kernels (no torch headers, so that the .cu
// compiles in seconds). The torch glue is csrc/cuda/spatial_maxsim_cuda.cpp.
//
// Layouts (all contiguous): patches [B, T, Np, D], words [C, Nw, D] (same element type), word_mask
// [C, Nw] bool, out / index / grad [B, C, T], grad_patches [B, T, Np, D] and grad_words [C, Nw, D].
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "launch_grid.h"

namespace stzsar {
namespace cuda {

enum class ElementType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

struct MaxsimSizes {
  int64_t B, T, Np, D, C, Nw;
};

// out[b, c, t] = max over valid l, max over k of <patches[b, t, k], words[c, l]> (fp32 accumulation;
// tensor cores for fp16/bf16, exact fp32 FMA for fp32); index[b, c, t] = the lowest flat k * Nw + l
// among the maxima. A class without a valid word gets -inf and index 0. Returns the launch error.
cudaError_t spatial_maxsim_forward(ElementType type, const void* patches, const void* words, const bool* word_mask,
                                   const MaxsimSizes& sizes, float* out, int32_t* index, cudaStream_t stream);

// Launch grids: the forward's (x: frames x groups of classes), the backward's for grad_patches (x:
// frames, y: blocks of 128 features) and grad_words (x: classes, y: blocks of features). The launchers
// fail with cudaErrorInvalidConfiguration where cuda_grid::fits is false (the glue reports it first).
cuda_grid::Grid maxsim_forward_grid(const MaxsimSizes& sizes);
cuda_grid::Grid maxsim_grad_patches_grid(const MaxsimSizes& sizes);
cuda_grid::Grid maxsim_grad_words_grid(const MaxsimSizes& sizes);

// grad_patches[b, t, k] = sum over c whose winner is (k, l) of grad[b, c, t] * words[c, l], and
// grad_words[c, l] = sum over (b, t) whose winner is (k, l) of grad[b, c, t] * patches[b, t, k], in fp32,
// written (not accumulated) into the fp32 buffers. Deterministic: no atomics. Indices outside
// [0, Np * Nw) are skipped (the CPU kernel raises on them). Returns the launch error.
cudaError_t spatial_maxsim_backward(ElementType type, const float* grad, const void* patches, const void* words,
                                    const int32_t* index, const MaxsimSizes& sizes, float* grad_patches,
                                    float* grad_words, cudaStream_t stream);

}  // namespace cuda
}  // namespace stzsar
