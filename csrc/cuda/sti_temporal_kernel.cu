// CUDA kernels of the fused temporal ops of the STI module (see sti_temporal_kernel.cuh).
//
// temporal saliency: one block per (block of classes, video). The video's frames and the block's
// word rows (contiguous in words [C, Nw, D]) are staged through shared memory in D-tiles of 32 and
// the T x (classes * Nw) dot products accumulate in shared memory. One thread per word column then
// runs the softmax over time (max-shifted, in place), and one thread per (class, t) averages over
// the class's valid words. Only S_temp leaves the block. The backward block recomputes the same
// and writes d S_sp plus the coefficients d loss / d <v_t, A~_l> for the caller's GEMMs.
//
// similarity: one block per (block of 32 classes, video): <z_c, v_t>, the T x T Gram matrix and
// |z_c|^2 through the same staging, then one thread per class for the numerator and S^T G S.
//
// Staged tiles use a pitch of 33 floats, so that threads reading consecutive rows hit distinct banks.

#include "sti_temporal_kernel.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>

namespace stzsar {
namespace sti_cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kTileD = 32;
constexpr int kPitch = kTileD + 1;
constexpr size_t kSmemLimit = 48 * 1024;  // the default dynamic shared memory limit of a block
constexpr int kTargetCols = 128;          // word columns per temporal block
constexpr int kSimilarityClasses = 32;    // classes per similarity block

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// Stage rows [row0, row0 + nrows) and columns [d0, d0 + kTileD) of a row-major [*, D] matrix into
// dst (pitch kPitch) as fp32; rows >= valid_rows and columns >= D read as 0.
template <typename T>
__device__ void stage_tile(const T* __restrict__ src, int64_t row0, int nrows, int valid_rows, int64_t D, int64_t d0,
                           float* dst) {
  for (int e = threadIdx.x; e < nrows * kTileD; e += blockDim.x) {
    const int r = e / kTileD, d = e % kTileD;
    float x = 0.0f;
    if (r < valid_rows && d0 + d < D) x = to_float(src[(row0 + r) * D + d0 + d]);
    dst[r * kPitch + d] = x;
  }
}

__device__ __forceinline__ float tile_dot(const float* x, const float* y) {
  float acc = 0.0f;
#pragma unroll
  for (int d = 0; d < kTileD; ++d) acc = fmaf(x[d], y[d], acc);
  return acc;
}

// dots[t * R + r] = <frames[b, t], words[row0 + r]> for t < T, r < R (0 for r >= valid_rows).
// Each entry belongs to one thread throughout, so the accumulation needs no synchronisation.
template <typename T>
__device__ void frame_word_dots(const T* __restrict__ frames, const T* __restrict__ words, int64_t b, int nT,
                                int64_t D, int64_t row0, int R, int valid_rows, float* vs, float* ws, float* dots) {
  for (int e = threadIdx.x; e < nT * R; e += blockDim.x) dots[e] = 0.0f;
  for (int64_t d0 = 0; d0 < D; d0 += kTileD) {
    __syncthreads();  // the previous tiles are consumed
    stage_tile(frames, b * nT, nT, nT, D, d0, vs);
    stage_tile(words, row0, R, valid_rows, D, d0, ws);
    __syncthreads();
    for (int e = threadIdx.x; e < nT * R; e += blockDim.x) {
      const int t = e / R, r = e % R;
      dots[e] += tile_dot(vs + t * kPitch, ws + r * kPitch);
    }
  }
  __syncthreads();
}

// count[j] = max(1, number of valid words of class c0 + j), for j < nc.
__device__ void word_counts(const bool* __restrict__ mask, int64_t c0, int nc, int Nw, float* count) {
  for (int j = threadIdx.x; j < nc; j += blockDim.x) {
    int n = 0;
    for (int l = 0; l < Nw; ++l) n += mask[(c0 + j) * Nw + l] ? 1 : 0;
    count[j] = static_cast<float>(n > 0 ? n : 1);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    temporal_forward_kernel(const float* __restrict__ s, const T* __restrict__ frames, const T* __restrict__ words,
                            const bool* __restrict__ mask, int64_t C, int nT, int Nw, int64_t D, int CB, float tau,
                            float* __restrict__ out) {
  extern __shared__ float smem[];
  const int64_t b = blockIdx.y;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * CB;
  const int nc = static_cast<int>(C - c0 < CB ? C - c0 : CB);
  const int R = CB * Nw;
  float* vs = smem;
  float* ws = vs + nT * kPitch;
  float* dots = ws + R * kPitch;
  float* count = dots + nT * R;

  frame_word_dots(frames, words, b, nT, D, c0 * Nw, R, nc * Nw, vs, ws, dots);
  word_counts(mask, c0, nc, Nw, count);

  // Softmax over time of every valid word column, in place; masked columns become 0.
  for (int r = threadIdx.x; r < nc * Nw; r += blockDim.x) {
    const int64_t c = c0 + r / Nw;
    float* col = dots + r;  // column r, stride R
    if (!mask[c * Nw + r % Nw]) {
      for (int t = 0; t < nT; ++t) col[t * R] = 0.0f;
      continue;
    }
    const float* sc = s + (b * C + c) * nT;
    float m = -INFINITY;
    for (int t = 0; t < nT; ++t) {
      const float x = sc[t] * col[t * R] / tau;
      col[t * R] = x;
      m = fmaxf(m, x);
    }
    float sum = 0.0f;
    for (int t = 0; t < nT; ++t) {
      const float e = expf(col[t * R] - m);
      col[t * R] = e;
      sum += e;
    }
    const float inv = 1.0f / sum;
    for (int t = 0; t < nT; ++t) col[t * R] *= inv;
  }
  __syncthreads();

  // Mean over each class's words.
  for (int e = threadIdx.x; e < nc * nT; e += blockDim.x) {
    const int j = e / nT, t = e % nT;
    const float* row = dots + t * R + j * Nw;
    float acc = 0.0f;
    for (int l = 0; l < Nw; ++l) acc += row[l];
    out[(b * C + c0 + j) * nT + t] = acc / count[j];
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    temporal_backward_kernel(const float* __restrict__ grad, const float* __restrict__ s,
                             const T* __restrict__ frames, const T* __restrict__ words, const bool* __restrict__ mask,
                             int64_t C, int nT, int Nw, int64_t D, int CB, float tau, int64_t c_lo, int64_t c_hi,
                             int64_t ldc, float* __restrict__ grad_s, float* __restrict__ coef) {
  extern __shared__ float smem[];
  const int64_t b = blockIdx.y;
  const int64_t c0 = c_lo + static_cast<int64_t>(blockIdx.x) * CB;
  const int nc = static_cast<int>(c_hi - c0 < CB ? c_hi - c0 : CB);
  const int R = CB * Nw;
  float* vs = smem;
  float* ws = vs + nT * kPitch;
  float* dots = ws + R * kPitch;
  float* count = dots + nT * R;

  frame_word_dots(frames, words, b, nT, D, c0 * Nw, R, nc * Nw, vs, ws, dots);
  word_counts(mask, c0, nc, Nw, count);
  __syncthreads();

  for (int r = threadIdx.x; r < nc * Nw; r += blockDim.x) {
    const int j = r / Nw;
    const int64_t c = c0 + j;
    float* col = dots + r;
    float* out_coef = coef + b * nT * ldc + (c - c_lo) * Nw + r % Nw;  // row b * T + t, stride ldc
    if (!mask[c * Nw + r % Nw]) {
      for (int t = 0; t < nT; ++t) {
        col[t * R] = 0.0f;
        out_coef[t * ldc] = 0.0f;
      }
      continue;
    }
    const float* sc = s + (b * C + c) * nT;
    const float* gc = grad + (b * C + c) * nT;
    float m = -INFINITY;
    for (int t = 0; t < nT; ++t) m = fmaxf(m, sc[t] * col[t * R] / tau);
    float sum = 0.0f, pg = 0.0f;
    for (int t = 0; t < nT; ++t) {
      const float e = expf(sc[t] * col[t * R] / tau - m);
      sum += e;
      pg += e * gc[t];
    }
    const float inv = 1.0f / sum;
    pg *= inv;
    // d loss / d logit = p (g - sum_t p g) / count, with the logit's 1/tau folded in.
    const float scale = inv / (count[j] * tau);
    for (int t = 0; t < nT; ++t) {
      const float dot = col[t * R];
      const float d_logit = expf(sc[t] * dot / tau - m) * (gc[t] - pg) * scale;
      col[t * R] = d_logit * dot;               // summed over words into grad_s below
      out_coef[t * ldc] = d_logit * sc[t];      // d loss / d <v_t, A~_l>
    }
  }
  __syncthreads();

  for (int e = threadIdx.x; e < nc * nT; e += blockDim.x) {
    const int j = e / nT, t = e % nT;
    const float* row = dots + t * R + j * Nw;
    float acc = 0.0f;
    for (int l = 0; l < Nw; ++l) acc += row[l];
    grad_s[(b * C + c0 + j) * nT + t] = acc;
  }
}

// <z_c, v_t>, the Gram matrix and |z_c|^2 of one video and a block of classes, into shared memory.
template <typename T>
__device__ void video_class_products(const T* __restrict__ frames, const T* __restrict__ z, int64_t b, int nT,
                                     int64_t D, int64_t c0, int nc, float* vs, float* zs, float* zv, float* gram,
                                     float* z_sq) {
  const int n_zv = kSimilarityClasses * nT, n_gram = nT * nT, total = n_zv + n_gram + kSimilarityClasses;
  for (int e = threadIdx.x; e < total; e += blockDim.x) {
    if (e < n_zv) {
      zv[e] = 0.0f;
    } else if (e < n_zv + n_gram) {
      gram[e - n_zv] = 0.0f;
    } else {
      z_sq[e - n_zv - n_gram] = 0.0f;
    }
  }
  for (int64_t d0 = 0; d0 < D; d0 += kTileD) {
    __syncthreads();
    stage_tile(frames, b * nT, nT, nT, D, d0, vs);
    stage_tile(z, c0, kSimilarityClasses, nc, D, d0, zs);
    __syncthreads();
    for (int e = threadIdx.x; e < total; e += blockDim.x) {
      if (e < n_zv) {
        zv[e] += tile_dot(zs + (e / nT) * kPitch, vs + (e % nT) * kPitch);
      } else if (e < n_zv + n_gram) {
        const int k = e - n_zv;
        gram[k] += tile_dot(vs + (k / nT) * kPitch, vs + (k % nT) * kPitch);
      } else {
        const int j = e - n_zv - n_gram;
        z_sq[j] += tile_dot(zs + j * kPitch, zs + j * kPitch);
      }
    }
  }
  __syncthreads();
}

template <typename T, bool kBackward>
__global__ void __launch_bounds__(kThreads)
    similarity_kernel(const float* __restrict__ grad, const float* __restrict__ s, const T* __restrict__ frames,
                      const T* __restrict__ z, int64_t B, int64_t C, int nT, int64_t D, float eps,
                      float* __restrict__ out, float* __restrict__ coef) {
  extern __shared__ float smem[];
  const int64_t b = blockIdx.y;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kSimilarityClasses;
  const int nc = static_cast<int>(C - c0 < kSimilarityClasses ? C - c0 : kSimilarityClasses);
  float* vs = smem;
  float* zs = vs + nT * kPitch;
  float* zv = zs + kSimilarityClasses * kPitch;
  float* gram = zv + kSimilarityClasses * nT;
  float* z_sq = gram + nT * nT;

  video_class_products(frames, z, b, nT, D, c0, nc, vs, zs, zv, gram, z_sq);

  for (int j = threadIdx.x; j < nc; j += blockDim.x) {
    const int64_t o = b * C + c0 + j;
    const float* sc = s + o * nT;
    const float* zvj = zv + j * nT;
    float num = 0.0f, quad = 0.0f;
    for (int t = 0; t < nT; ++t) {
      float row = 0.0f;
      for (int u = 0; u < nT; ++u) row = fmaf(gram[t * nT + u], sc[u], row);
      num = fmaf(sc[t], zvj[t], num);
      quad = fmaf(sc[t], row, quad);
    }
    const float f_norm = sqrtf(fmaxf(quad, 0.0f));
    const float z_norm = sqrtf(z_sq[j]);
    const float den = f_norm * z_norm;
    const float safe = fmaxf(den, eps);
    if (!kBackward) {
      out[o] = num / safe;
      continue;
    }
    const bool active = den >= eps;  // below the floor the denominator is a constant
    const float g = grad[o];
    const float d_num = g / safe;
    const float d_den = active ? -g * num / (safe * safe) : 0.0f;
    const float w = active ? d_den * z_norm / f_norm : 0.0f;
    for (int t = 0; t < nT; ++t) {
      float row = 0.0f;
      for (int u = 0; u < nT; ++u) row = fmaf(gram[t * nT + u], sc[u], row);
      out[o * nT + t] = d_num * zvj[t] + w * row;  // out is grad_s here
    }
    coef[o] = d_num;
    coef[B * C + o] = w;
    coef[2 * B * C + o] = active ? d_den * f_norm / z_norm : 0.0f;
  }
}

size_t temporal_smem(int64_t T, int64_t CB, int64_t Nw) {
  const int64_t R = CB * Nw;
  return static_cast<size_t>((T + R) * kPitch + T * R + CB) * sizeof(float);
}

size_t similarity_smem(int64_t T) {
  return static_cast<size_t>((T + kSimilarityClasses) * kPitch + kSimilarityClasses * T + T * T +
                             kSimilarityClasses) *
         sizeof(float);
}

// Classes per temporal block: ~kTargetCols word columns, at most C, within the shared memory limit.
int64_t temporal_classes_per_block(int64_t C, int64_t T, int64_t Nw) {
  int64_t cb = kTargetCols / (Nw > 0 ? Nw : 1);
  if (cb < 1) cb = 1;
  if (cb > C) cb = C > 0 ? C : 1;
  while (cb > 1 && temporal_smem(T, cb, Nw) > kSmemLimit) --cb;
  return cb;
}

template <typename F>
cudaError_t dispatch(ElementType type, F&& f) {
  switch (type) {
    case ElementType::kFloat32:
      return f(float{});
    case ElementType::kFloat16:
      return f(__half{});
    case ElementType::kBFloat16:
      return f(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace

bool temporal_fits(int64_t T, int64_t Nw) { return temporal_smem(T, 1, Nw) <= kSmemLimit; }

bool similarity_fits(int64_t T) { return similarity_smem(T) <= kSmemLimit; }

cuda_grid::Grid temporal_grid(int64_t B, int64_t classes, int64_t T, int64_t Nw) {
  const int64_t cb = temporal_classes_per_block(classes, T, Nw);
  return {(classes + cb - 1) / cb, B, 1};
}

cuda_grid::Grid similarity_grid(int64_t B, int64_t C) {
  return {(C + kSimilarityClasses - 1) / kSimilarityClasses, B, 1};
}

cudaError_t temporal_saliency_forward(ElementType type, const float* s, const void* frames, const void* words,
                                      const bool* word_mask, const TemporalSizes& z, float tau, float* out,
                                      cudaStream_t stream) {
  if (z.B == 0 || z.C == 0 || z.T == 0) return cudaSuccess;
  const cuda_grid::Grid g = temporal_grid(z.B, z.C, z.T, z.Nw);
  if (!temporal_fits(z.T, z.Nw) || !cuda_grid::fits(g)) return cudaErrorInvalidConfiguration;
  const int64_t cb = temporal_classes_per_block(z.C, z.T, z.Nw);
  const dim3 grid(static_cast<unsigned>(g.x), static_cast<unsigned>(g.y));
  const size_t smem = temporal_smem(z.T, cb, z.Nw);
  return dispatch(type, [&](auto tag) {
    using T = decltype(tag);
    temporal_forward_kernel<T><<<grid, kThreads, smem, stream>>>(
        s, static_cast<const T*>(frames), static_cast<const T*>(words), word_mask, z.C, static_cast<int>(z.T),
        static_cast<int>(z.Nw), z.D, static_cast<int>(cb), tau, out);
    return cudaGetLastError();
  });
}

cudaError_t temporal_saliency_backward_coef(ElementType type, const float* grad, const float* s, const void* frames,
                                            const void* words, const bool* word_mask, const TemporalSizes& z,
                                            float tau, int64_t c_lo, int64_t c_hi, int64_t ldc, float* grad_s,
                                            float* coef, cudaStream_t stream) {
  if (z.B == 0 || c_hi <= c_lo || z.T == 0) return cudaSuccess;
  const cuda_grid::Grid g = temporal_grid(z.B, c_hi - c_lo, z.T, z.Nw);
  if (!temporal_fits(z.T, z.Nw) || !cuda_grid::fits(g)) return cudaErrorInvalidConfiguration;
  const int64_t cb = temporal_classes_per_block(c_hi - c_lo, z.T, z.Nw);
  const dim3 grid(static_cast<unsigned>(g.x), static_cast<unsigned>(g.y));
  const size_t smem = temporal_smem(z.T, cb, z.Nw);
  return dispatch(type, [&](auto tag) {
    using T = decltype(tag);
    temporal_backward_kernel<T><<<grid, kThreads, smem, stream>>>(
        grad, s, static_cast<const T*>(frames), static_cast<const T*>(words), word_mask, z.C, static_cast<int>(z.T),
        static_cast<int>(z.Nw), z.D, static_cast<int>(cb), tau, c_lo, c_hi, ldc, grad_s, coef);
    return cudaGetLastError();
  });
}

cudaError_t sti_similarity_forward(ElementType type, const float* s, const void* frames, const void* class_emb,
                                   const SimilaritySizes& z, float eps, float* out, cudaStream_t stream) {
  if (z.B == 0 || z.C == 0) return cudaSuccess;
  const cuda_grid::Grid g = similarity_grid(z.B, z.C);
  if (!similarity_fits(z.T) || !cuda_grid::fits(g)) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(g.x), static_cast<unsigned>(g.y));
  return dispatch(type, [&](auto tag) {
    using T = decltype(tag);
    similarity_kernel<T, false><<<grid, kThreads, similarity_smem(z.T), stream>>>(
        nullptr, s, static_cast<const T*>(frames), static_cast<const T*>(class_emb), z.B, z.C,
        static_cast<int>(z.T), z.D, eps, out, nullptr);
    return cudaGetLastError();
  });
}

cudaError_t sti_similarity_backward_coef(ElementType type, const float* grad, const float* s, const void* frames,
                                         const void* class_emb, const SimilaritySizes& z, float eps, float* grad_s,
                                         float* coef, cudaStream_t stream) {
  if (z.B == 0 || z.C == 0) return cudaSuccess;
  const cuda_grid::Grid g = similarity_grid(z.B, z.C);
  if (!similarity_fits(z.T) || !cuda_grid::fits(g)) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(g.x), static_cast<unsigned>(g.y));
  return dispatch(type, [&](auto tag) {
    using T = decltype(tag);
    similarity_kernel<T, true><<<grid, kThreads, similarity_smem(z.T), stream>>>(
        grad, s, static_cast<const T*>(frames), static_cast<const T*>(class_emb), z.B, z.C,
        static_cast<int>(z.T), z.D, eps, grad_s, coef);
    return cudaGetLastError();
  });
}

}  // namespace sti_cuda
}  // namespace stzsar
