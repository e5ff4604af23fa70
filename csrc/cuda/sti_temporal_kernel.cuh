// Plain CUDA launchers of the fused temporal ops of the STI module (no torch headers, so that the .cu
// compiles in seconds). The torch glue is csrc/cuda/sti_temporal_cuda.cpp; the math is in
// csrc/sti_temporal_common.h and stzsar/ops/temporal.py.
//
// Layouts (all contiguous): s / grad_s / grad [B, C, T] fp32, frames [B, T, D], words [C, Nw, D],
// class_emb [C, D] (frames, words and class_emb of one element type), word_mask [C, Nw] bool.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "launch_grid.h"

namespace stzsar {
namespace sti_cuda {

enum class ElementType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

struct TemporalSizes {
  int64_t B, C, T, Nw, D;
};

struct SimilaritySizes {
  int64_t B, C, T, D;
};

// Whether one class (T x Nw dot products plus the staging tiles) fits a block's shared memory;
// the launchers fail with cudaErrorInvalidConfiguration otherwise (the glue reports it first).
bool temporal_fits(int64_t T, int64_t Nw);
bool similarity_fits(int64_t T);

// Launch grids (x: blocks of classes, y: videos) for `classes` classes of B videos; the launchers
// fail with cudaErrorInvalidConfiguration where cuda_grid::fits is false (the glue reports it first).
cuda_grid::Grid temporal_grid(int64_t B, int64_t classes, int64_t T, int64_t Nw);
cuda_grid::Grid similarity_grid(int64_t B, int64_t C);

// out[b, c, t] = mean over valid l of softmax over t of s[b, c, t] <frames[b, t], words[c, l]> / tau.
// One block per (class block, video); writes every out[b, c, t]. Returns the launch error.
cudaError_t temporal_saliency_forward(ElementType type, const float* s, const void* frames, const void* words,
                                      const bool* word_mask, const TemporalSizes& sizes, float tau, float* out,
                                      cudaStream_t stream);

// For the classes [c_lo, c_hi): grad_s[b, c, t] (written) and, in coef (row b * T + t, column
// (c - c_lo) * Nw + l, leading dimension ldc), d loss / d <frames[b, t], words[c, l]> (0 for masked
// words). The frame and word gradients are GEMMs on coef (done by the caller).
cudaError_t temporal_saliency_backward_coef(ElementType type, const float* grad, const float* s, const void* frames,
                                            const void* words, const bool* word_mask, const TemporalSizes& sizes,
                                            float tau, int64_t c_lo, int64_t c_hi, int64_t ldc, float* grad_s,
                                            float* coef, cudaStream_t stream);

// out[b, c] = <z_c, f> / max(|z_c| |f|, eps), f = sum_t s[b, c, t] frames[b, t], through the Gram
// matrix of the video's frames. Returns the launch error.
cudaError_t sti_similarity_forward(ElementType type, const float* s, const void* frames, const void* class_emb,
                                   const SimilaritySizes& sizes, float eps, float* out, cudaStream_t stream);

// grad_s[b, c, t] (written) and coef [3, B, C]: a = d loss / d numerator, w = (d loss / d |f|) / |f|,
// u = (d loss / d |z|) / |z| (w = u = 0 where the eps floor is active), for the GEMM epilogue.
cudaError_t sti_similarity_backward_coef(ElementType type, const float* grad, const float* s, const void* frames,
                                         const void* class_emb, const SimilaritySizes& sizes, float eps,
                                         float* grad_s, float* coef, cudaStream_t stream);

}  // namespace sti_cuda
}  // namespace stzsar
