// CPU kernels of stzsar::spatial_maxsim_fused_fwd / _bwd (schemas in csrc/ops.cpp).
//
// Forward: the similarity of a block of whole frames ([frames * Np, D]) with a chunk of whole classes
// (their valid words only, [words, D]) is one fp32 GEMM into a per-thread buffer that stays in cache;
// a running maximum per (b, c, t) then reduces it. Nothing of size B x C x T x Np x Nw is ever formed.
// Blocks run in parallel (at::parallel_for); the GEMM inside each runs single-threaded, since MKL does
// not open a nested parallel region.
//
// Backward: only the winners get gradient, so dP is parallel over frames (each thread owns its rows and
// loops over classes) and dW over classes (looping over frames): deterministic, no atomics.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "../spatial_maxsim_common.h"

namespace stzsar {
namespace {

// Block sizes of the forward GEMMs: ~512 patch rows (whole frames) x <= 160 valid words (whole
// classes). The patch block, the word chunk and the similarity block (1 + 0.3 + 0.3 MB at D = 512)
// stay in a core's L2, and each GEMM (80+ MFLOP) is large enough for MKL to run near its peak. MKL
// switches to a path with ~3.5 MB of extra per-process buffers once N exceeds ~160 columns, for a
// few percent of speed; staying under it keeps the kernel's working memory at ~1-2 MB.
constexpr int64_t kTargetRows = 512;
constexpr int64_t kTargetCols = 160;

// Calls f(scalar_t{}) for the three input types (check_forward/check_backward reject the others).
template <typename F>
void dispatch_input_type(at::ScalarType type, F&& f) {
  switch (type) {
    case at::kFloat:
      f(float{});
      break;
    case at::kHalf:
      f(c10::Half{});
      break;
    case at::kBFloat16:
      f(c10::BFloat16{});
      break;
    default:
      TORCH_CHECK(false, "stzsar::spatial_maxsim: unsupported dtype ", type);
  }
}

// Where the valid words of every class sit once the masked ones are dropped. The GEMMs only see
// valid words (fewer flops with ragged masks, no masking in the reduction); each thread packs the words
// of its current class chunk into its own buffer, so no full-size copy of the words is ever made.
struct WordLayout {
  std::vector<int64_t> start;  // start[c] = packed position of class c's first valid word; start[C] = n_valid
  std::vector<int32_t> word;   // word[position] = the word's index l within its class
};

WordLayout word_layout(const at::Tensor& word_mask) {
  const int64_t C = word_mask.size(0), Nw = word_mask.size(1);
  const bool* mask = word_mask.data_ptr<bool>();
  WordLayout layout;
  layout.start.resize(static_cast<size_t>(C + 1));
  int64_t n_valid = 0;
  for (int64_t c = 0; c < C; ++c) {
    layout.start[static_cast<size_t>(c)] = n_valid;
    for (int64_t l = 0; l < Nw; ++l) {
      if (mask[c * Nw + l]) {
        layout.word.push_back(static_cast<int32_t>(l));
        ++n_valid;
      }
    }
  }
  layout.start[static_cast<size_t>(C)] = n_valid;
  return layout;
}

// One row of the similarity block into the running column maxima: best[j] / best_row[j] take
// row[j] / k where row[j] is strictly larger, so each column keeps its first (lowest k) maximum.
// Compare-and-blend over contiguous columns vectorises; cloned for AVX-512/AVX2 since the extension
// is built for the baseline ISA. This is the only per-element work besides the GEMM.
__attribute__((target_clones("avx512f", "avx2", "default"))) void update_column_max(const float* row, float* best,
                                                                                     int32_t* best_row, int64_t n,
                                                                                     int32_t k) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const bool larger = row[j] > best[j];
    best[j] = larger ? row[j] : best[j];
    best_row[j] = larger ? k : best_row[j];
  }
}

template <typename scalar_t>
void forward_impl(const at::Tensor& patches, const at::Tensor& words, const WordLayout& layout, const maxsim::Sizes& s,
                  at::Tensor& out, at::Tensor& index) {
  const int64_t BT = s.B * s.T, Np = s.Np, D = s.D, C = s.C, Nw = s.Nw, T = s.T;

  // Class chunks: whole classes, up to ~kTargetCols valid words each (at least one class).
  std::vector<std::pair<int64_t, int64_t>> chunks;
  int64_t max_cols = 0, max_classes = 0;
  for (int64_t c0 = 0; c0 < C;) {
    int64_t c1 = c0 + 1;
    while (c1 < C && layout.start[c1 + 1] - layout.start[c0] <= kTargetCols) ++c1;
    chunks.emplace_back(c0, c1);
    max_cols = std::max(max_cols, layout.start[c1] - layout.start[c0]);
    max_classes = std::max(max_classes, c1 - c0);
    c0 = c1;
  }
  const int64_t frames_per_block = std::max<int64_t>(1, std::min<int64_t>(BT, kTargetRows / std::max<int64_t>(Np, 1)));
  const int64_t n_frame_blocks = (BT + frames_per_block - 1) / frames_per_block;
  const int64_t n_tasks = static_cast<int64_t>(chunks.size()) * n_frame_blocks;

  const scalar_t* patches_ptr = patches.data_ptr<scalar_t>();
  const scalar_t* words_ptr = words.data_ptr<scalar_t>();
  float* out_ptr = out.data_ptr<float>();
  int32_t* index_ptr = index.data_ptr<int32_t>();
  const auto fopts = at::TensorOptions().dtype(at::kFloat);
  constexpr bool kFloatInput = std::is_same<scalar_t, float>::value;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();

  // Tasks are numbered chunk-major, so consecutive tasks reuse one word chunk. Workers take the next
  // task from a shared counter (not a fixed share), so a core slowed by other processes does not
  // hold up the rest; every (b, c, t) is written by exactly one task, whichever worker runs it.
  std::atomic<int64_t> next_task{0};
  const int64_t n_workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_tasks));
  at::parallel_for(0, n_workers, 1, [&](int64_t, int64_t) {
    std::vector<float> sim(static_cast<size_t>(frames_per_block * Np * std::max<int64_t>(max_cols, 1)));
    std::vector<float> upcast(kFloatInput ? 0 : static_cast<size_t>(frames_per_block * Np * D));
    std::vector<float> chunk_words;  // the current chunk's valid words, fp32 (unless used in place)
    int64_t packed_chunk = -1;
    const float* w_ptr = nullptr;
    std::vector<float> col_best(static_cast<size_t>(std::max<int64_t>(max_cols, 1)));
    std::vector<int32_t> col_row(static_cast<size_t>(std::max<int64_t>(max_cols, 1)));
    std::vector<float> best(static_cast<size_t>(max_classes));
    std::vector<int32_t> winner(static_cast<size_t>(max_classes));
    for (int64_t task = next_task++; task < n_tasks; task = next_task++) {
      const int64_t chunk = task / n_frame_blocks;
      const auto [c0, c1] = chunks[static_cast<size_t>(chunk)];
      if (chunk != packed_chunk) {
        const int64_t n_valid = layout.start[c1] - layout.start[c0];
        if (kFloatInput && n_valid == (c1 - c0) * Nw) {
          w_ptr = reinterpret_cast<const float*>(words_ptr) + c0 * Nw * D;  // dense fp32 chunk: no copy
        } else {
          chunk_words.resize(static_cast<size_t>(std::max<int64_t>(n_valid, 1) * D));
          for (int64_t c = c0; c < c1; ++c) {
            for (int64_t pos = layout.start[c]; pos < layout.start[c + 1]; ++pos) {
              const scalar_t* src = words_ptr + (c * Nw + layout.word[pos]) * D;
              float* dst = chunk_words.data() + (pos - layout.start[c0]) * D;
              for (int64_t i = 0; i < D; ++i) dst[i] = static_cast<float>(src[i]);
            }
          }
          w_ptr = chunk_words.data();
        }
        packed_chunk = chunk;
      }
      const int64_t f0 = (task % n_frame_blocks) * frames_per_block;
      const int64_t nf = std::min(frames_per_block, BT - f0);
      const int64_t rows = nf * Np, col0 = layout.start[c0], cols = layout.start[c1] - col0;

      if (cols > 0 && rows > 0) {
        const float* a_ptr;
        if constexpr (kFloatInput) {
          a_ptr = patches_ptr + f0 * Np * D;
        } else {
          const scalar_t* src = patches_ptr + f0 * Np * D;
          for (int64_t i = 0; i < rows * D; ++i) upcast[static_cast<size_t>(i)] = static_cast<float>(src[i]);
          a_ptr = upcast.data();
        }
        auto a = at::from_blob(const_cast<float*>(a_ptr), {rows, D}, fopts);
        auto w = at::from_blob(const_cast<float*>(w_ptr), {cols, D}, fopts);
        auto sim_block = at::from_blob(sim.data(), {rows, cols}, fopts);
        at::mm_out(sim_block, a, w.t());
      }

      for (int64_t fi = 0; fi < nf; ++fi) {
        // Per column (word) the best patch k, rows in increasing k ...
        std::fill(col_best.begin(), col_best.begin() + cols, kNegInf);
        std::fill(col_row.begin(), col_row.begin() + cols, 0);
        for (int64_t k = 0; k < Np; ++k)
          update_column_max(sim.data() + (fi * Np + k) * cols, col_best.data(), col_row.data(), cols,
                            static_cast<int32_t>(k));
        // ... then per class the best of its words, equal scores going to the lowest k * Nw + l.
        for (int64_t c = c0; c < c1; ++c) {
          float bv = kNegInf;
          int32_t bi = 0;
          for (int64_t pos = layout.start[c]; pos < layout.start[c + 1]; ++pos) {
            const int64_t j = pos - col0;
            const float v = col_best[static_cast<size_t>(j)];
            const int32_t flat = static_cast<int32_t>(col_row[static_cast<size_t>(j)] * Nw + layout.word[pos]);
            if (pos == layout.start[c] || v > bv || (v == bv && flat < bi)) {
              bv = v;
              bi = flat;
            }
          }
          best[static_cast<size_t>(c - c0)] = bv;
          winner[static_cast<size_t>(c - c0)] = bi;
        }
        const int64_t frame = f0 + fi, b = frame / T, t = frame % T;
        for (int64_t c = c0; c < c1; ++c) {
          out_ptr[(b * C + c) * T + t] = best[static_cast<size_t>(c - c0)];
          index_ptr[(b * C + c) * T + t] = winner[static_cast<size_t>(c - c0)];
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> spatial_maxsim_fused_fwd_cpu(const at::Tensor& patches, const at::Tensor& words,
                                                                const at::Tensor& word_mask) {
  const auto s = maxsim::check_forward(patches, words, word_mask, c10::DeviceType::CPU);
  auto out = at::empty({s.B, s.C, s.T}, patches.options().dtype(at::kFloat));
  auto index = at::empty({s.B, s.C, s.T}, patches.options().dtype(at::kInt));
  if (out.numel() == 0) return {out, index};
  dispatch_input_type(patches.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    forward_impl<scalar_t>(patches, words, word_layout(word_mask), s, out, index);
  });
  return {out, index};
}

template <typename scalar_t>
void backward_impl(const at::Tensor& grad, const at::Tensor& patches, const at::Tensor& words,
                   const at::Tensor& index, const maxsim::Sizes& s, at::Tensor& grad_patches,
                   at::Tensor& grad_words) {
  const int64_t B = s.B, T = s.T, Np = s.Np, D = s.D, C = s.C, Nw = s.Nw;
  const float* g = grad.data_ptr<float>();
  const int32_t* idx = index.data_ptr<int32_t>();
  const scalar_t* P = patches.data_ptr<scalar_t>();
  const scalar_t* W = words.data_ptr<scalar_t>();
  scalar_t* dP = grad_patches.data_ptr<scalar_t>();
  scalar_t* dW = grad_words.data_ptr<scalar_t>();
  const int64_t n_index = Np * Nw;

  auto check_index = [&](int32_t i) {
    TORCH_CHECK(i >= 0 && i < n_index, "stzsar::spatial_maxsim_fused_bwd: index ", i, " out of range [0, ",
                n_index, ")");
  };

  // dP[b, t, k] = sum over c with winner k of g[b, c, t] * W[c, l]; each frame's rows belong to one thread.
  at::parallel_for(0, B * T, 1, [&](int64_t f_begin, int64_t f_end) {
    std::vector<float> acc(static_cast<size_t>(Np * D));
    for (int64_t frame = f_begin; frame < f_end; ++frame) {
      const int64_t b = frame / T, t = frame % T;
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t c = 0; c < C; ++c) {
        const int64_t o = (b * C + c) * T + t;
        check_index(idx[o]);
        const int64_t k = idx[o] / Nw, l = idx[o] % Nw;
        const float gv = g[o];
        const scalar_t* w = W + (c * Nw + l) * D;
        float* a = acc.data() + k * D;
        for (int64_t d = 0; d < D; ++d) a[d] += gv * static_cast<float>(w[d]);
      }
      scalar_t* dst = dP + frame * Np * D;
      for (int64_t i = 0; i < Np * D; ++i) dst[i] = static_cast<scalar_t>(acc[static_cast<size_t>(i)]);
    }
  });

  // dW[c, l] = sum over (b, t) with winner l of g[b, c, t] * P[b, t, k]; each class belongs to one thread.
  at::parallel_for(0, C, 1, [&](int64_t c_begin, int64_t c_end) {
    std::vector<float> acc(static_cast<size_t>(Nw * D));
    for (int64_t c = c_begin; c < c_end; ++c) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t t = 0; t < T; ++t) {
          const int64_t o = (b * C + c) * T + t;
          check_index(idx[o]);
          const int64_t k = idx[o] / Nw, l = idx[o] % Nw;
          const float gv = g[o];
          const scalar_t* p = P + ((b * T + t) * Np + k) * D;
          float* a = acc.data() + l * D;
          for (int64_t d = 0; d < D; ++d) a[d] += gv * static_cast<float>(p[d]);
        }
      }
      scalar_t* dst = dW + c * Nw * D;
      for (int64_t i = 0; i < Nw * D; ++i) dst[i] = static_cast<scalar_t>(acc[static_cast<size_t>(i)]);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> spatial_maxsim_fused_bwd_cpu(const at::Tensor& grad, const at::Tensor& patches,
                                                                const at::Tensor& words, const at::Tensor& index) {
  const auto s = maxsim::check_backward(grad, patches, words, index, c10::DeviceType::CPU);
  auto grad_patches = at::empty_like(patches);
  auto grad_words = at::empty_like(words);
  dispatch_input_type(patches.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    backward_impl<scalar_t>(grad, patches, words, index, s, grad_patches, grad_words);
  });
  return {grad_patches, grad_words};
}

}  // namespace
}  // namespace stzsar

TORCH_LIBRARY_IMPL(stzsar, CPU, m) {
  m.impl("spatial_maxsim_fused_fwd", &stzsar::spatial_maxsim_fused_fwd_cpu);
  m.impl("spatial_maxsim_fused_bwd", &stzsar::spatial_maxsim_fused_bwd_cpu);
}
