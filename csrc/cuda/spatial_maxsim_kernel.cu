// CUDA kernels of stzsar::spatial_maxsim_fused_fwd / _bwd (plain CUDA: no torch headers here).
//
// Forward. One thread block owns one frame (b, t) and a group of whole classes (their words are the
// columns, padded to 64-column tiles). It walks the 64 x 64 tiles of the frame's [Np, group words]
// similarity, each a small GEMM over D (tensor cores through WMMA for fp16/bf16, exact fp32 FMAs for
// fp32, both accumulating in fp32, tails of Np, D and the words zero-padded), and reduces every tile
// in shared memory into a running (score, lowest flat index) per class. A block writes its own
// (b, c, t) outputs once: no atomics, and nothing of size B x C x T x Np x Nw is stored.
// Blocks of one frame are adjacent in the grid, so a frame's patches are read from DRAM about once
// and served from L2 to the other class groups; all words together usually fit in L2.
//
// Backward. Only the winners get gradient. dP: a block per (frame, 128 features); each thread owns
// one feature column of the frame's Np rows and adds the classes' winning words in class order. dW:
// a block per (class, 128 features), adding the winning patches in frame order. Deterministic.

#include "spatial_maxsim_kernel.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <climits>
#include <cstdint>

namespace stzsar {
namespace cuda {
namespace {

constexpr int kThreads = 128;        // 4 warps per block
constexpr int kBM = 64;              // patch rows per tile
constexpr int kBN = 64;              // word columns per tile
constexpr int kLdc = kBN + 4;        // fp32 tile row stride in shared memory
constexpr int kMaxGroupClasses = 64; // classes per block (bounded by the 64 columns of one tile when Nw = 1)
constexpr int kMaxGroupColumns = 256;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T zero_value();
template <>
__device__ __forceinline__ __half zero_value<__half>() { return __float2half(0.0f); }
template <>
__device__ __forceinline__ __nv_bfloat16 zero_value<__nv_bfloat16>() { return __float2bfloat16(0.0f); }

// ------------------------------------------------------------------------------------------------
// Tile engines: stage a [kBM x BK] patch slice and a [kBN x BK] word slice through registers into
// double-buffered shared memory, multiply, and store the fp32 64 x 64 tile for the epilogue.
// Rows past Np / the group's words and features past D are zero, so they add nothing.
// ------------------------------------------------------------------------------------------------

// fp16 / bf16 on tensor cores: each warp computes a 32 x 32 quarter as 2 x 2 WMMA 16x16x16 fragments.
template <typename T>
struct TensorCoreTile {
  using scalar_t = T;
  static constexpr int kBK = 32;
  static constexpr int kLds = kBK + 8;  // 80-byte rows: fragment pointers stay 32-byte aligned
  static constexpr int kVecElems = 8;   // one 16-byte load
  struct Smem {
    T a[2][kBM][kLds];
    T b[2][kBN][kLds];
  };

  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> acc[2][2];
  // Staging registers: 2 x 16 bytes per operand when vectorised, else 16 scalars.
  uint4 va[2], vb[2];
  T sa[16], sb[16];

  __device__ void zero() {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) nvcuda::wmma::fill_fragment(acc[i][j], 0.0f);
  }

  template <bool kVec>
  __device__ void load(const T* __restrict__ A, const T* __restrict__ B, int rows_a, int rows_b, int D, int k0,
                       int tid) {
    if constexpr (kVec) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int v = tid + i * kThreads, r = v >> 2, c = (v & 3) * 8;
        const bool in_k = k0 + c < D;
        va[i] = (r < rows_a && in_k) ? *reinterpret_cast<const uint4*>(A + (int64_t)r * D + k0 + c) : make_uint4(0, 0, 0, 0);
        vb[i] = (r < rows_b && in_k) ? *reinterpret_cast<const uint4*>(B + (int64_t)r * D + k0 + c) : make_uint4(0, 0, 0, 0);
      }
    } else {
#pragma unroll
      for (int i = 0; i < 16; ++i) {
        const int e = tid + i * kThreads, r = e >> 5, c = e & 31;
        const bool in_k = k0 + c < D;
        sa[i] = (r < rows_a && in_k) ? A[(int64_t)r * D + k0 + c] : zero_value<T>();
        sb[i] = (r < rows_b && in_k) ? B[(int64_t)r * D + k0 + c] : zero_value<T>();
      }
    }
  }

  template <bool kVec>
  __device__ void store(Smem& s, int stage, int tid) {
    if constexpr (kVec) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int v = tid + i * kThreads, r = v >> 2, c = (v & 3) * 8;
        *reinterpret_cast<uint4*>(&s.a[stage][r][c]) = va[i];
        *reinterpret_cast<uint4*>(&s.b[stage][r][c]) = vb[i];
      }
    } else {
#pragma unroll
      for (int i = 0; i < 16; ++i) {
        const int e = tid + i * kThreads, r = e >> 5, c = e & 31;
        s.a[stage][r][c] = sa[i];
        s.b[stage][r][c] = sb[i];
      }
    }
  }

  __device__ void compute(const Smem& s, int stage, int tid) {
    using namespace nvcuda;
    const int warp = tid >> 5, wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], &s.a[stage][wm + i * 16][kk], kLds);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], &s.b[stage][wn + j * 16][kk], kLds);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
  }

  __device__ void store_tile(float* cs, int tid) {
    const int warp = tid >> 5, wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j)
        nvcuda::wmma::store_matrix_sync(cs + (wm + i * 16) * kLdc + wn + j * 16, acc[i][j], kLdc,
                                        nvcuda::wmma::mem_row_major);
  }
};

// fp32 with plain FMAs (exact fp32 products and sums): each thread computes 8 rows x 4 columns.
struct SimtFloatTile {
  using scalar_t = float;
  static constexpr int kBK = 16;
  static constexpr int kVecElems = 4;
  struct Smem {
    float a[2][kBK][kBM + 4];  // k-major, so a thread's 8 rows / 4 columns are contiguous
    float b[2][kBK][kBN + 4];
  };

  float acc[8][4];
  float4 va[2], vb[2];
  float sa[8], sb[8];

  __device__ void zero() {
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
  }

  template <bool kVec>
  __device__ void load(const float* __restrict__ A, const float* __restrict__ B, int rows_a, int rows_b, int D,
                       int k0, int tid) {
    if constexpr (kVec) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int v = tid + i * kThreads, r = v >> 2, c = (v & 3) * 4;
        const bool in_k = k0 + c < D;
        va[i] = (r < rows_a && in_k) ? *reinterpret_cast<const float4*>(A + (int64_t)r * D + k0 + c)
                                     : make_float4(0.f, 0.f, 0.f, 0.f);
        vb[i] = (r < rows_b && in_k) ? *reinterpret_cast<const float4*>(B + (int64_t)r * D + k0 + c)
                                     : make_float4(0.f, 0.f, 0.f, 0.f);
      }
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int e = tid + i * kThreads, r = e >> 4, c = e & 15;
        const bool in_k = k0 + c < D;
        sa[i] = (r < rows_a && in_k) ? A[(int64_t)r * D + k0 + c] : 0.0f;
        sb[i] = (r < rows_b && in_k) ? B[(int64_t)r * D + k0 + c] : 0.0f;
      }
    }
  }

  template <bool kVec>
  __device__ void store(Smem& s, int stage, int tid) {
    if constexpr (kVec) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int v = tid + i * kThreads, r = v >> 2, c = (v & 3) * 4;
        s.a[stage][c + 0][r] = va[i].x;
        s.a[stage][c + 1][r] = va[i].y;
        s.a[stage][c + 2][r] = va[i].z;
        s.a[stage][c + 3][r] = va[i].w;
        s.b[stage][c + 0][r] = vb[i].x;
        s.b[stage][c + 1][r] = vb[i].y;
        s.b[stage][c + 2][r] = vb[i].z;
        s.b[stage][c + 3][r] = vb[i].w;
      }
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int e = tid + i * kThreads, r = e >> 4, c = e & 15;
        s.a[stage][c][r] = sa[i];
        s.b[stage][c][r] = sb[i];
      }
    }
  }

  __device__ void compute(const Smem& s, int stage, int tid) {
    const int ty = tid >> 4, tx = tid & 15;
#pragma unroll
    for (int kk = 0; kk < kBK; ++kk) {
      const float4 a0 = *reinterpret_cast<const float4*>(&s.a[stage][kk][ty * 8]);
      const float4 a1 = *reinterpret_cast<const float4*>(&s.a[stage][kk][ty * 8 + 4]);
      const float4 b0 = *reinterpret_cast<const float4*>(&s.b[stage][kk][tx * 4]);
      const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      const float b[4] = {b0.x, b0.y, b0.z, b0.w};
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
  }

  __device__ void store_tile(float* cs, int tid) {
    const int ty = tid >> 4, tx = tid & 15;
#pragma unroll
    for (int i = 0; i < 8; ++i)
      *reinterpret_cast<float4*>(cs + (ty * 8 + i) * kLdc + tx * 4) =
          make_float4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
  }
};

template <class Tile>
struct SmemBytes {
  static constexpr size_t kValue = sizeof(typename Tile::Smem) > sizeof(float) * kBM * kLdc
                                       ? sizeof(typename Tile::Smem)
                                       : sizeof(float) * kBM * kLdc;
};

template <class Tile, bool kVec>
__global__ void __launch_bounds__(kThreads)
    maxsim_forward_kernel(const typename Tile::scalar_t* __restrict__ patches,
                          const typename Tile::scalar_t* __restrict__ words, const bool* __restrict__ word_mask,
                          int T, int Np, int D, int C, int Nw, int group_classes, int n_groups,
                          float* __restrict__ out, int32_t* __restrict__ index) {
  using scalar_t = typename Tile::scalar_t;
  // The operand stages and the fp32 tile of the epilogue share one buffer (never live together).
  __shared__ __align__(128) unsigned char smem_raw[SmemBytes<Tile>::kValue];
  __shared__ float col_val[2][kBN];
  __shared__ int col_row[2][kBN];
  __shared__ float best_val[kMaxGroupClasses];
  __shared__ int best_idx[kMaxGroupClasses];
  auto& s = *reinterpret_cast<typename Tile::Smem*>(smem_raw);
  float* cs = reinterpret_cast<float*>(smem_raw);

  const int tid = threadIdx.x;
  const int group = static_cast<int>(blockIdx.x % n_groups);
  const int64_t frame = blockIdx.x / n_groups;
  const int c0 = group * group_classes;
  const int n_classes = min(group_classes, C - c0);
  const int n_cols = n_classes * Nw;
  const scalar_t* frame_patches = patches + frame * Np * D;
  const scalar_t* group_words = words + (int64_t)c0 * Nw * D;
  const bool* group_mask = word_mask + (int64_t)c0 * Nw;
  const float kNegInf = __int_as_float(0xff800000);  // -inf
  if (tid < n_classes) {
    best_val[tid] = kNegInf;
    best_idx[tid] = 0;
  }

  Tile tile;
  const int nk = (D + Tile::kBK - 1) / Tile::kBK;
  for (int n0 = 0; n0 < n_cols; n0 += kBN) {
    const scalar_t* tile_words = group_words + (int64_t)n0 * D;
    const int rows_b = n_cols - n0;
    for (int m0 = 0; m0 < Np; m0 += kBM) {
      const scalar_t* tile_patches = frame_patches + (int64_t)m0 * D;
      const int rows_a = Np - m0;
      tile.zero();
      if (nk > 0) {
        tile.template load<kVec>(tile_patches, tile_words, rows_a, rows_b, D, 0, tid);
        tile.template store<kVec>(s, 0, tid);
      }
      __syncthreads();
      for (int kt = 0; kt < nk; ++kt) {
        const bool more = kt + 1 < nk;
        // Global loads of the next slice are in flight while the tensor cores / FMAs work.
        if (more) tile.template load<kVec>(tile_patches, tile_words, rows_a, rows_b, D, (kt + 1) * Tile::kBK, tid);
        tile.compute(s, kt & 1, tid);
        if (more) tile.template store<kVec>(s, (kt + 1) & 1, tid);
        __syncthreads();
      }

      // Epilogue 1: the fp32 tile to shared memory, then per column the best row (first on ties),
      // two threads per column, 32 rows each.
      tile.store_tile(cs, tid);
      __syncthreads();
      {
        const int j = tid & (kBN - 1), half = tid >> 6;
        const int r_begin = half * 32, r_end = min(r_begin + 32, rows_a);
        float bv = kNegInf;
        int br = r_begin < r_end ? r_begin : -1;
        for (int r = r_begin; r < r_end; ++r) {
          const float v = cs[r * kLdc + j];
          if (v > bv) {
            bv = v;
            br = r;
          }
        }
        col_val[half][j] = bv;
        col_row[half][j] = br;
      }
      __syncthreads();
      // Epilogue 2: one thread per class that has columns in this tile merges them, in column order,
      // into the class's running best with the order (higher score, then lower flat index).
      {
        const int n_end = min(n0 + kBN, n_cols);
        const int cl = n0 / Nw + tid;
        if (cl <= (n_end - 1) / Nw) {
          float bv = best_val[cl];
          int bi = best_idx[cl];
          const int j_begin = max(n0, cl * Nw) - n0, j_end = min(n_end, (cl + 1) * Nw) - n0;
          for (int j = j_begin; j < j_end; ++j) {
            if (!group_mask[n0 + j]) continue;
            const int l = n0 + j - cl * Nw;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              if (col_row[h][j] < 0) continue;
              const float v = col_val[h][j];
              const int flat = (m0 + col_row[h][j]) * Nw + l;
              if (v > bv || (v == bv && flat < bi)) {
                bv = v;
                bi = flat;
              }
            }
          }
          best_val[cl] = bv;
          best_idx[cl] = bi;
        }
      }
      __syncthreads();  // the next tile reuses the shared buffers
    }
  }

  if (tid < n_classes) {
    const int64_t b = frame / T, t = frame % T;
    const int64_t o = (b * C + c0 + tid) * T + t;
    out[o] = best_val[tid];
    index[o] = best_idx[tid];
  }
}

// Classes per block: whole classes, at most 256 columns (one class always fits however long), with
// the least padding of the last 64-column tile; among equal padding the fewest classes (more blocks).
int choose_group_classes(int64_t C, int64_t Nw) {
  int best = 1;
  double best_waste = 1e30;
  for (int g = 1; g <= kMaxGroupClasses && g <= C; ++g) {
    const int64_t cols = g * Nw;
    if (g > 1 && cols > kMaxGroupColumns) break;
    const int64_t padded = (cols + kBN - 1) / kBN * kBN;
    const double waste = static_cast<double>(padded) / static_cast<double>(cols);
    if (waste < best_waste - 1e-9) {
      best = g;
      best_waste = waste;
    }
  }
  return best;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <class Tile>
cudaError_t launch_forward(const void* patches, const void* words, const bool* word_mask, const MaxsimSizes& s,
                           float* out, int32_t* index, cudaStream_t stream) {
  using scalar_t = typename Tile::scalar_t;
  const int group_classes = choose_group_classes(s.C, s.Nw);
  const int64_t n_groups = (s.C + group_classes - 1) / group_classes;
  const int64_t blocks = maxsim_forward_grid(s).x;
  if (blocks == 0) return cudaSuccess;
  if (!cuda_grid::fits(maxsim_forward_grid(s)) || s.Np > INT_MAX || s.D > INT_MAX || s.C > INT_MAX ||
      s.Nw > INT_MAX || s.T > INT_MAX)
    return cudaErrorInvalidConfiguration;
  const bool vec = s.D % Tile::kVecElems == 0 && aligned16(patches) && aligned16(words);
  auto* kernel = vec ? maxsim_forward_kernel<Tile, true> : maxsim_forward_kernel<Tile, false>;
  kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      static_cast<const scalar_t*>(patches), static_cast<const scalar_t*>(words), word_mask, (int)s.T, (int)s.Np,
      (int)s.D, (int)s.C, (int)s.Nw, group_classes, (int)n_groups, out, index);
  return cudaGetLastError();
}

// ------------------------------------------------------------------------------------------------
// Backward
// ------------------------------------------------------------------------------------------------

constexpr int kGradThreads = 128;  // features per block; one thread per feature column

template <typename T>
__global__ void __launch_bounds__(kGradThreads)
    grad_patches_kernel(const float* __restrict__ grad, const T* __restrict__ words, const int32_t* __restrict__ index,
                        int64_t T_frames, int64_t Np, int64_t D, int64_t C, int64_t Nw, float* __restrict__ grad_patches) {
  __shared__ int64_t s_row[kGradThreads];  // winning patch row k, or -1 for an invalid index
  __shared__ int64_t s_word[kGradThreads]; // winning word c * Nw + l
  __shared__ float s_grad[kGradThreads];
  const int64_t frame = blockIdx.x, b = frame / T_frames, t = frame % T_frames;
  const int64_t d = (int64_t)blockIdx.y * kGradThreads + threadIdx.x;
  float* dst = grad_patches + frame * Np * D;
  if (d < D)
    for (int64_t k = 0; k < Np; ++k) dst[k * D + d] = 0.0f;
  for (int64_t c0 = 0; c0 < C; c0 += kGradThreads) {
    __syncthreads();
    const int64_t c = c0 + threadIdx.x;
    if (c < C) {
      const int64_t o = (b * C + c) * T_frames + t;
      const int64_t i = index[o];
      const bool ok = i >= 0 && i < Np * Nw;
      s_row[threadIdx.x] = ok ? i / Nw : -1;
      s_word[threadIdx.x] = c * Nw + (ok ? i % Nw : 0);
      s_grad[threadIdx.x] = grad[o];
    }
    __syncthreads();
    const int n = C - c0 < kGradThreads ? (int)(C - c0) : kGradThreads;
    if (d < D) {
      for (int j = 0; j < n; ++j) {
        if (s_row[j] < 0) continue;
        dst[s_row[j] * D + d] += s_grad[j] * to_float(words[s_word[j] * D + d]);
      }
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kGradThreads)
    grad_words_kernel(const float* __restrict__ grad, const T* __restrict__ patches, const int32_t* __restrict__ index,
                      int64_t B, int64_t T_frames, int64_t Np, int64_t D, int64_t C, int64_t Nw,
                      float* __restrict__ grad_words) {
  __shared__ int64_t s_word[kGradThreads];  // winning word l, or -1 for an invalid index
  __shared__ int64_t s_row[kGradThreads];   // winning patch row (b * T + t) * Np + k
  __shared__ float s_grad[kGradThreads];
  const int64_t c = blockIdx.x;
  const int64_t d = (int64_t)blockIdx.y * kGradThreads + threadIdx.x;
  float* dst = grad_words + c * Nw * D;
  if (d < D)
    for (int64_t l = 0; l < Nw; ++l) dst[l * D + d] = 0.0f;
  const int64_t frames = B * T_frames;
  for (int64_t f0 = 0; f0 < frames; f0 += kGradThreads) {
    __syncthreads();
    const int64_t f = f0 + threadIdx.x;
    if (f < frames) {
      const int64_t b = f / T_frames, t = f % T_frames;
      const int64_t o = (b * C + c) * T_frames + t;
      const int64_t i = index[o];
      const bool ok = i >= 0 && i < Np * Nw;
      s_word[threadIdx.x] = ok ? i % Nw : -1;
      s_row[threadIdx.x] = f * Np + (ok ? i / Nw : 0);
      s_grad[threadIdx.x] = grad[o];
    }
    __syncthreads();
    const int n = frames - f0 < kGradThreads ? (int)(frames - f0) : kGradThreads;
    if (d < D) {
      for (int j = 0; j < n; ++j) {
        if (s_word[j] < 0) continue;
        dst[s_word[j] * D + d] += s_grad[j] * to_float(patches[s_row[j] * D + d]);
      }
    }
  }
}

template <typename T>
cudaError_t launch_backward(const float* grad, const void* patches, const void* words, const int32_t* index,
                            const MaxsimSizes& s, float* grad_patches, float* grad_words, cudaStream_t stream) {
  const cuda_grid::Grid patches_grid = maxsim_grad_patches_grid(s), words_grid = maxsim_grad_words_grid(s);
  if (!cuda_grid::fits(patches_grid) || !cuda_grid::fits(words_grid)) return cudaErrorInvalidConfiguration;
  if (s.B * s.T > 0 && s.D > 0) {
    const dim3 grid(static_cast<unsigned>(patches_grid.x), static_cast<unsigned>(patches_grid.y));
    grad_patches_kernel<T><<<grid, kGradThreads, 0, stream>>>(grad, static_cast<const T*>(words), index, s.T, s.Np,
                                                              s.D, s.C, s.Nw, grad_patches);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  if (s.C > 0 && s.D > 0) {
    const dim3 grid(static_cast<unsigned>(words_grid.x), static_cast<unsigned>(words_grid.y));
    grad_words_kernel<T><<<grid, kGradThreads, 0, stream>>>(grad, static_cast<const T*>(patches), index, s.B, s.T,
                                                            s.Np, s.D, s.C, s.Nw, grad_words);
  }
  return cudaGetLastError();
}

}  // namespace

cuda_grid::Grid maxsim_forward_grid(const MaxsimSizes& s) {
  const int64_t group_classes = choose_group_classes(s.C, s.Nw);
  return {s.B * s.T * ((s.C + group_classes - 1) / group_classes), 1, 1};
}

cuda_grid::Grid maxsim_grad_patches_grid(const MaxsimSizes& s) {
  return {s.B * s.T, (s.D + kGradThreads - 1) / kGradThreads, 1};
}

cuda_grid::Grid maxsim_grad_words_grid(const MaxsimSizes& s) { return {s.C, (s.D + kGradThreads - 1) / kGradThreads, 1}; }

cudaError_t spatial_maxsim_forward(ElementType type, const void* patches, const void* words, const bool* word_mask,
                                   const MaxsimSizes& sizes, float* out, int32_t* index, cudaStream_t stream) {
  switch (type) {
    case ElementType::kFloat32:
      return launch_forward<SimtFloatTile>(patches, words, word_mask, sizes, out, index, stream);
    case ElementType::kFloat16:
      return launch_forward<TensorCoreTile<__half>>(patches, words, word_mask, sizes, out, index, stream);
    case ElementType::kBFloat16:
      return launch_forward<TensorCoreTile<__nv_bfloat16>>(patches, words, word_mask, sizes, out, index, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t spatial_maxsim_backward(ElementType type, const float* grad, const void* patches, const void* words,
                                    const int32_t* index, const MaxsimSizes& sizes, float* grad_patches,
                                    float* grad_words, cudaStream_t stream) {
  switch (type) {
    case ElementType::kFloat32:
      return launch_backward<float>(grad, patches, words, index, sizes, grad_patches, grad_words, stream);
    case ElementType::kFloat16:
      return launch_backward<__half>(grad, patches, words, index, sizes, grad_patches, grad_words, stream);
    case ElementType::kBFloat16:
      return launch_backward<__nv_bfloat16>(grad, patches, words, index, sizes, grad_patches, grad_words, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace stzsar
