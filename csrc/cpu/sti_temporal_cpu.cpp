// Schemas of the fused temporal ops of the STI module (docs/method.md section 4), their Meta kernels and
// their CPU kernels. See csrc/sti_temporal_common.h for the signatures.
//
// temporal_saliency: the classes are cut into blocks of ~kTargetCols words. One task (a thread's
// range of blocks) computes the dot products of all B*T frames with a block's words as one fp32 GEMM
// into a per-thread buffer that stays in cache, then the per-word softmax over time (max-shifted) and
// the mean over valid words, writing only S_temp. The backward recomputes the dot products one chunk
// of classes at a time (a [B*T, chunk*Nw] buffer of at most 16 MB), turns them in place into
// d loss / d <v_t, A~_l> (parallel over (video, class)) and ends each chunk with two GEMMs, the
// word and the frame gradients. Nothing of size [B, C, T, Nw] is kept between forward and backward.
//
// sti_similarity: one task per video: <z_c, v_t> for all classes ([T, C]) and the T x T Gram matrix
// in per-thread buffers, then per class the numerator and S^T G S. f_st [B, C, D] is never formed.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "../sti_temporal_common.h"

namespace stzsar {
namespace {

using sti::SimilaritySizes;
using sti::TemporalSizes;

// Word columns per class block: B*T x 256 floats per buffer (32 KB at B*T = 32), and GEMMs of
// 2*B*T*256*D flops, large enough for the BLAS call overhead to vanish.
constexpr int64_t kTargetCols = 256;
// Upper bound on the elements of the backward coefficient buffer (16 MB of fp32).
constexpr int64_t kCoefElements = int64_t{1} << 22;

constexpr const char* kTemporalFwd = "stzsar::temporal_saliency_fused_fwd";
constexpr const char* kTemporalBwd = "stzsar::temporal_saliency_fused_bwd";
constexpr const char* kSimilarityFwd = "stzsar::sti_similarity_fused_fwd";
constexpr const char* kSimilarityBwd = "stzsar::sti_similarity_fused_bwd";

// float32 view of the features, detached: the GEMMs into per-thread buffers (out= variants) run in
// worker threads, whose grad mode is their own, and must never see a tensor that requires grad.
at::Tensor as_float(const at::Tensor& t) {
  const at::Tensor plain = t.detach();
  return plain.scalar_type() == at::kFloat ? plain : plain.to(at::kFloat);
}

int64_t classes_per_block(int64_t C, int64_t Nw) {
  return std::max<int64_t>(1, std::min<int64_t>(C, kTargetCols / std::max<int64_t>(Nw, 1)));
}

std::vector<int64_t> valid_counts(const at::Tensor& word_mask) {
  const int64_t C = word_mask.size(0), Nw = word_mask.size(1);
  const bool* mask = word_mask.data_ptr<bool>();
  std::vector<int64_t> count(static_cast<size_t>(C), 0);
  for (int64_t c = 0; c < C; ++c)
    for (int64_t l = 0; l < Nw; ++l) count[static_cast<size_t>(c)] += mask[c * Nw + l] ? 1 : 0;
  return count;
}

// exp(x) below e^-80 is flushed to 0 (an absolute error under 1e-34 on a probability): subnormal
// floats make the BLAS GEMMs that consume these values ~100x slower on x86.
constexpr float kExpFloor = -80.0f;

inline float flush_subnormal(float x) { return std::fabs(x) < std::numeric_limits<float>::min() ? 0.0f : x; }

// Per-thread scratch of one (video, class) tile.
struct TileScratch {
  std::vector<float> p, col_max, col_scale, valid, s_tau;
  TileScratch(int64_t T, int64_t Nw)
      : p(static_cast<size_t>(T * Nw)), col_max(static_cast<size_t>(Nw)), col_scale(static_cast<size_t>(Nw)),
        valid(static_cast<size_t>(Nw)), s_tau(static_cast<size_t>(T)) {}
};

// Softmax over t of logit[t, l] = s[t] / tau * dot[t * ld + l] for every word l of one (video, class)
// tile, max-shifted per word, into w.p[t * Nw + l]; 0 for masked words (whose dots are never used, so
// nothing of a masked word can leak in, not even a NaN). The loops run over l innermost, contiguous
// in both the dot products and the scratch, so that they vectorise.
inline void tile_softmax(const float* s, const float* dot, int64_t ld, const bool* mask, int64_t T, int64_t Nw,
                         float tau, TileScratch& w) {
  float* p = w.p.data();
  float* col_max = w.col_max.data();
  float* col_scale = w.col_scale.data();
  float* valid = w.valid.data();
  for (int64_t l = 0; l < Nw; ++l) {
    valid[l] = mask[l] ? 1.0f : 0.0f;
    col_max[l] = -std::numeric_limits<float>::infinity();
    col_scale[l] = 0.0f;
  }
  for (int64_t t = 0; t < T; ++t) {
    const float st = s[t] / tau;
    w.s_tau[static_cast<size_t>(t)] = st;
    const float* d = dot + t * ld;
    float* row = p + t * Nw;
    for (int64_t l = 0; l < Nw; ++l) {
      const float x = valid[l] != 0.0f ? st * d[l] : 0.0f;
      row[l] = x;
      col_max[l] = std::max(col_max[l], x);
    }
  }
  for (int64_t t = 0; t < T; ++t) {
    float* row = p + t * Nw;
    for (int64_t l = 0; l < Nw; ++l) {
      const float x = row[l] - col_max[l];
      row[l] = x < kExpFloor ? 0.0f : std::exp(x);
      col_scale[l] += row[l];
    }
  }
  for (int64_t l = 0; l < Nw; ++l) col_scale[l] = valid[l] / col_scale[l];
  for (int64_t t = 0; t < T; ++t) {
    float* row = p + t * Nw;
    for (int64_t l = 0; l < Nw; ++l) row[l] *= col_scale[l];
  }
}

// ---------------------------------------------------------------------------------------------
// temporal_saliency
// ---------------------------------------------------------------------------------------------

at::Tensor temporal_saliency_fused_fwd_cpu(const at::Tensor& s_sp, const at::Tensor& frames, const at::Tensor& words,
                                           const at::Tensor& word_mask, double temperature) {
  at::AutoDispatchBelowADInplaceOrView guard;  // the GEMMs below are not part of any autograd graph
  const sti::NoAutocast no_autocast;
  const TemporalSizes z = sti::check_temporal(kTemporalFwd, at::Tensor(), s_sp, frames, words, word_mask,
                                              temperature, c10::DeviceType::CPU);
  at::Tensor out = at::zeros({z.B, z.C, z.T}, s_sp.options());
  if (out.numel() == 0 || z.Nw == 0) return out;
  const at::Tensor v = as_float(frames).reshape({z.B * z.T, z.D});
  const at::Tensor a = as_float(words).reshape({z.C * z.Nw, z.D});
  const std::vector<int64_t> count = valid_counts(word_mask);
  const bool* mask = word_mask.data_ptr<bool>();
  const float* s_ptr = s_sp.data_ptr<float>();
  float* out_ptr = out.data_ptr<float>();
  const float tau = static_cast<float>(temperature);
  const int64_t B = z.B, C = z.C, T = z.T, Nw = z.Nw, BT = z.B * z.T;
  const int64_t per_block = classes_per_block(C, Nw);
  const int64_t n_blocks = (C + per_block - 1) / per_block;

  at::parallel_for(0, n_blocks, 1, [&](int64_t first, int64_t last) {
    std::vector<float> dots(static_cast<size_t>(BT * per_block * Nw));
    TileScratch scratch(T, Nw);
    for (int64_t block = first; block < last; ++block) {
      const int64_t c0 = block * per_block, c1 = std::min(C, c0 + per_block), cols = (c1 - c0) * Nw;
      auto dots_t = at::from_blob(dots.data(), {BT, cols}, at::TensorOptions().dtype(at::kFloat));
      at::mm_out(dots_t, v, a.narrow(0, c0 * Nw, cols).t());  // [B*T, cols], row b*T + t
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t c = c0; c < c1; ++c) {
          const float* s = s_ptr + (b * C + c) * T;
          float* o = out_ptr + (b * C + c) * T;
          const float inv_count = 1.0f / static_cast<float>(std::max<int64_t>(count[static_cast<size_t>(c)], 1));
          tile_softmax(s, dots.data() + b * T * cols + (c - c0) * Nw, cols, mask + c * Nw, T, Nw, tau, scratch);
          for (int64_t t = 0; t < T; ++t) {
            const float* row = scratch.p.data() + t * Nw;
            float acc = 0.0f;
            for (int64_t l = 0; l < Nw; ++l) acc += row[l];
            o[t] = acc * inv_count;
          }
        }
      }
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> temporal_saliency_fused_bwd_cpu(
    const at::Tensor& grad, const at::Tensor& s_sp, const at::Tensor& frames, const at::Tensor& words,
    const at::Tensor& word_mask, double temperature, std::array<bool, 3> output_mask) {
  at::AutoDispatchBelowADInplaceOrView guard;  // the GEMMs below are not part of any autograd graph
  const sti::NoAutocast no_autocast;
  const TemporalSizes z = sti::check_temporal(kTemporalBwd, grad, s_sp, frames, words, word_mask, temperature,
                                              c10::DeviceType::CPU);
  const int64_t B = z.B, C = z.C, T = z.T, Nw = z.Nw, D = z.D, BT = z.B * z.T;
  const auto fopts = at::TensorOptions().dtype(at::kFloat);
  const auto [need_s, need_v, need_a] = output_mask;
  at::Tensor grad_s = at::zeros({B, C, T}, fopts);
  at::Tensor grad_v = at::zeros({BT, D}, fopts);
  // Every row of grad_a is written by one chunk's GEMM below (zeros only when there is none).
  const bool empty = grad_s.numel() == 0 || Nw == 0 || D == 0;
  at::Tensor grad_a = need_a ? (empty ? at::zeros({C * Nw, D}, fopts) : at::empty({C * Nw, D}, fopts))
                              : at::empty({0, D}, fopts);
  auto result = [&]() -> std::tuple<at::Tensor, at::Tensor, at::Tensor> {
    return {sti::masked_grad(need_s, grad_s, s_sp), sti::masked_grad(need_v, grad_v.view({B, T, D}), frames),
            sti::masked_grad(need_a, grad_a.view({need_a ? C : 0, Nw, D}), words)};
  };
  if (empty) return result();
  const at::Tensor v = as_float(frames).reshape({BT, D});
  const at::Tensor a = as_float(words).reshape({C * Nw, D});
  const std::vector<int64_t> count = valid_counts(word_mask);
  const bool* mask = word_mask.data_ptr<bool>();
  const float* s_ptr = s_sp.data_ptr<float>();
  const float* g_ptr = grad.data_ptr<float>();
  float* gs_ptr = grad_s.data_ptr<float>();
  const float tau = static_cast<float>(temperature);

  // Classes are processed in chunks whose coefficient buffer [B*T, chunk*Nw] stays under
  // kCoefElements; per chunk: one GEMM recomputes the dot products, the (b, c) pairs turn them in
  // place into d loss / d <v_t, A~_l> in parallel, and two GEMMs give the chunk's word gradients and
  // its share of the frame gradients. Deterministic for any thread count.
  const int64_t per_chunk = std::max<int64_t>(1, std::min<int64_t>(C, kCoefElements / std::max<int64_t>(1, BT * Nw)));
  const int64_t ld = per_chunk * Nw;
  at::Tensor coef = at::empty({BT, ld}, fopts);
  float* coef_ptr = coef.data_ptr<float>();
  for (int64_t c_lo = 0; c_lo < C; c_lo += per_chunk) {
    const int64_t c_hi = std::min(C, c_lo + per_chunk), nc = c_hi - c_lo, cols = nc * Nw;
    at::Tensor chunk = coef.narrow(1, 0, cols);
    const at::Tensor a_chunk = a.narrow(0, c_lo * Nw, cols);
    at::mm_out(chunk, v, a_chunk.t());  // the dot products, overwritten by their gradients below
    at::parallel_for(0, B * nc, 1, [&](int64_t first, int64_t last) {
      TileScratch scratch(T, Nw);
      std::vector<float> pg(static_cast<size_t>(Nw));
      for (int64_t pair = first; pair < last; ++pair) {
        const int64_t b = pair / nc, c = c_lo + pair % nc;
        const int64_t o = (b * C + c) * T;
        const float* s = s_ptr + o;
        const float* g = g_ptr + o;
        float* gs = gs_ptr + o;
        float* dot = coef_ptr + b * T * ld + (c - c_lo) * Nw;  // [T, Nw] tile, row stride ld
        tile_softmax(s, dot, ld, mask + c * Nw, T, Nw, tau, scratch);
        const float* p = scratch.p.data();
        // d loss / d logit[t, l] = p[t, l] (g[t] - sum_t' p[t', l] g[t']) / count; with the logit's
        // s[t] / tau this gives d loss / d s[t] (summed over l) and d loss / d <v_t, A~_l>.
        std::fill(pg.begin(), pg.end(), 0.0f);
        for (int64_t t = 0; t < T; ++t)
          for (int64_t l = 0; l < Nw; ++l) pg[static_cast<size_t>(l)] += p[t * Nw + l] * g[t];
        const float inv_count = 1.0f / static_cast<float>(std::max<int64_t>(count[static_cast<size_t>(c)], 1));
        for (int64_t t = 0; t < T; ++t) {
          const float* pr = p + t * Nw;
          float* d = dot + t * ld;
          const float gt = g[t], st = scratch.s_tau[static_cast<size_t>(t)];
          float acc = 0.0f;
          for (int64_t l = 0; l < Nw; ++l) {
            const float d_logit = flush_subnormal(pr[l] * (gt - pg[static_cast<size_t>(l)]) * inv_count);
            acc += d_logit * d[l];
            d[l] = flush_subnormal(d_logit * st);
          }
          gs[t] = acc / tau;
        }
      }
    });
    if (need_a) {
      at::Tensor ga_chunk = grad_a.narrow(0, c_lo * Nw, cols);
      at::mm_out(ga_chunk, chunk.t(), v);
    }
    if (need_v) grad_v.addmm_(chunk, a_chunk);
  }
  return result();
}

// ---------------------------------------------------------------------------------------------
// sti_similarity
// ---------------------------------------------------------------------------------------------

// Per video b: zv[t, c] = <v_t, z_c> and the Gram matrix gram[t, t'] = <v_t, v_t'>, in the buffers.
void video_products(const at::Tensor& v, const at::Tensor& zt, int64_t b, int64_t T, float* zv, float* gram) {
  const auto fopts = at::TensorOptions().dtype(at::kFloat);
  const at::Tensor vb = v[b];  // [T, D]
  auto zv_t = at::from_blob(zv, {T, zt.size(1)}, fopts);
  auto gram_t = at::from_blob(gram, {T, T}, fopts);
  at::mm_out(zv_t, vb, zt);
  at::mm_out(gram_t, vb, vb.t());
}

// num = sum_t s[t] zv[t * stride], quad = s^T G s; gs = G s (optional).
inline void numerator_and_norm(const float* s, const float* zv, int64_t stride, const float* gram, int64_t T,
                               float& num, float& quad, float* gs) {
  num = 0.0f;
  quad = 0.0f;
  for (int64_t t = 0; t < T; ++t) {
    num += s[t] * zv[t * stride];
    float row = 0.0f;
    for (int64_t u = 0; u < T; ++u) row += gram[t * T + u] * s[u];
    if (gs != nullptr) gs[t] = row;
    quad += s[t] * row;
  }
}

at::Tensor sti_similarity_fused_fwd_cpu(const at::Tensor& s_temp, const at::Tensor& frames,
                                        const at::Tensor& class_emb, double eps) {
  at::AutoDispatchBelowADInplaceOrView guard;  // the GEMMs below are not part of any autograd graph
  const sti::NoAutocast no_autocast;
  const SimilaritySizes z = sti::check_similarity(kSimilarityFwd, at::Tensor(), s_temp, frames, class_emb, eps,
                                                  c10::DeviceType::CPU);
  const int64_t B = z.B, C = z.C, T = z.T;
  at::Tensor out = at::zeros({B, C}, s_temp.options());
  if (out.numel() == 0) return out;
  const at::Tensor v = as_float(frames);
  const at::Tensor z32 = as_float(class_emb);
  const at::Tensor zt = z32.t();
  const at::Tensor z_norm = z32.norm(2, {1}).contiguous();
  const float* zn = z_norm.data_ptr<float>();
  const float* s_ptr = s_temp.data_ptr<float>();
  float* out_ptr = out.data_ptr<float>();
  const float floor = static_cast<float>(eps);

  at::parallel_for(0, B, 1, [&](int64_t first, int64_t last) {
    std::vector<float> zv(static_cast<size_t>(T * C)), gram(static_cast<size_t>(T * T));
    for (int64_t b = first; b < last; ++b) {
      video_products(v, zt, b, T, zv.data(), gram.data());
      for (int64_t c = 0; c < C; ++c) {
        float num, quad;
        numerator_and_norm(s_ptr + (b * C + c) * T, zv.data() + c, C, gram.data(), T, num, quad, nullptr);
        const float den = std::sqrt(std::max(quad, 0.0f)) * zn[c];
        out_ptr[b * C + c] = num / std::max(den, floor);
      }
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sti_similarity_fused_bwd_cpu(const at::Tensor& grad,
                                                                            const at::Tensor& s_temp,
                                                                            const at::Tensor& frames,
                                                                            const at::Tensor& class_emb, double eps,
                                                                            std::array<bool, 3> output_mask) {
  at::AutoDispatchBelowADInplaceOrView guard;  // the GEMMs below are not part of any autograd graph
  const sti::NoAutocast no_autocast;
  const SimilaritySizes z = sti::check_similarity(kSimilarityBwd, grad, s_temp, frames, class_emb, eps,
                                                  c10::DeviceType::CPU);
  const int64_t B = z.B, C = z.C, T = z.T;
  const auto fopts = at::TensorOptions().dtype(at::kFloat);
  at::Tensor grad_s = at::zeros({B, C, T}, fopts);
  at::Tensor coef_a = at::zeros({B, C}, fopts), coef_w = at::zeros({B, C}, fopts), coef_u = at::zeros({B, C}, fopts);
  const at::Tensor v = as_float(frames);
  const at::Tensor z32 = as_float(class_emb);
  if (grad_s.numel() > 0) {
    const at::Tensor zt = z32.t();
    const at::Tensor z_norm = z32.norm(2, {1}).contiguous();
    const float* zn = z_norm.data_ptr<float>();
    const float* s_ptr = s_temp.data_ptr<float>();
    const float* g_ptr = grad.data_ptr<float>();
    float* gs_ptr = grad_s.data_ptr<float>();
    float *a_ptr = coef_a.data_ptr<float>(), *w_ptr = coef_w.data_ptr<float>(), *u_ptr = coef_u.data_ptr<float>();
    const float floor = static_cast<float>(eps);

    at::parallel_for(0, B, 1, [&](int64_t first, int64_t last) {
      std::vector<float> zv(static_cast<size_t>(T * C)), gram(static_cast<size_t>(T * T)), gs(static_cast<size_t>(T));
      for (int64_t b = first; b < last; ++b) {
        video_products(v, zt, b, T, zv.data(), gram.data());
        for (int64_t c = 0; c < C; ++c) {
          const int64_t o = b * C + c;
          const float* s = s_ptr + o * T;
          float num, quad;
          numerator_and_norm(s, zv.data() + c, C, gram.data(), T, num, quad, gs.data());
          const float f_norm = std::sqrt(std::max(quad, 0.0f));
          const float den = f_norm * zn[c];
          const bool active = den >= floor;  // below the floor the denominator is a constant
          const float safe = std::max(den, floor);
          const float g = g_ptr[o];
          const float d_num = g / safe;
          const float d_den = active ? -g * num / (safe * safe) : 0.0f;
          // d den / d s = |z| G s / |f|;  d den / d |z| = |f|
          const float w = active ? d_den * zn[c] / f_norm : 0.0f;
          for (int64_t t = 0; t < T; ++t) gs_ptr[o * T + t] = d_num * zv[t * C + c] + w * gs[t];
          a_ptr[o] = d_num;
          w_ptr[o] = w;
          u_ptr[o] = active ? d_den * f_norm / zn[c] : 0.0f;
        }
      }
    });
  }
  const auto [grad_v, grad_z] =
      sti::similarity_epilogue(s_temp, v, z32, coef_a, coef_w, coef_u, output_mask[1], output_mask[2]);
  return {sti::masked_grad(output_mask[0], grad_s, s_temp), sti::masked_grad(output_mask[1], grad_v, frames),
          sti::masked_grad(output_mask[2], grad_z, class_emb)};
}

// ---------------------------------------------------------------------------------------------
// Meta kernels (shapes only)
// ---------------------------------------------------------------------------------------------

at::Tensor temporal_saliency_fused_fwd_meta(const at::Tensor& s_sp, const at::Tensor& frames, const at::Tensor& words,
                                            const at::Tensor& word_mask, double temperature) {
  sti::check_temporal(kTemporalFwd, at::Tensor(), s_sp, frames, words, word_mask, temperature,
                      c10::DeviceType::Meta);
  return at::empty_like(s_sp);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> temporal_saliency_fused_bwd_meta(
    const at::Tensor& grad, const at::Tensor& s_sp, const at::Tensor& frames, const at::Tensor& words,
    const at::Tensor& word_mask, double temperature, std::array<bool, 3> output_mask) {
  sti::check_temporal(kTemporalBwd, grad, s_sp, frames, words, word_mask, temperature, c10::DeviceType::Meta);
  return {sti::masked_grad(output_mask[0], at::empty_like(s_sp), s_sp),
          sti::masked_grad(output_mask[1], at::empty_like(frames), frames),
          sti::masked_grad(output_mask[2], at::empty_like(words), words)};
}

at::Tensor sti_similarity_fused_fwd_meta(const at::Tensor& s_temp, const at::Tensor& frames,
                                         const at::Tensor& class_emb, double eps) {
  const SimilaritySizes z = sti::check_similarity(kSimilarityFwd, at::Tensor(), s_temp, frames, class_emb, eps,
                                                  c10::DeviceType::Meta);
  return at::empty({z.B, z.C}, s_temp.options());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sti_similarity_fused_bwd_meta(const at::Tensor& grad,
                                                                             const at::Tensor& s_temp,
                                                                             const at::Tensor& frames,
                                                                             const at::Tensor& class_emb, double eps,
                                                                             std::array<bool, 3> output_mask) {
  sti::check_similarity(kSimilarityBwd, grad, s_temp, frames, class_emb, eps, c10::DeviceType::Meta);
  return {sti::masked_grad(output_mask[0], at::empty_like(s_temp), s_temp),
          sti::masked_grad(output_mask[1], at::empty_like(frames), frames),
          sti::masked_grad(output_mask[2], at::empty_like(class_emb), class_emb)};
}

}  // namespace
}  // namespace stzsar

TORCH_LIBRARY_FRAGMENT(stzsar, m) {
  // S_temp[b,c,t] = mean over valid l of softmax over t of s_sp[b,c,t] <frames[b,t], words[c,l]> / temperature.
  m.def("temporal_saliency_fused_fwd(Tensor s_sp, Tensor frames, Tensor words, Tensor word_mask, float temperature)"
        " -> Tensor");
  // Gradients w.r.t. s_sp, frames and words, given grad = d loss / d S_temp; those that output_mask
  // leaves out come back empty.
  m.def("temporal_saliency_fused_bwd(Tensor grad, Tensor s_sp, Tensor frames, Tensor words, Tensor word_mask, "
        "float temperature, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // cos[b,c] = <z_c, f_st> / max(|z_c| |f_st|, eps), f_st = sum_t s_temp[b,c,t] frames[b,t] (never formed).
  m.def("sti_similarity_fused_fwd(Tensor s_temp, Tensor frames, Tensor class_emb, float eps) -> Tensor");
  // Gradients w.r.t. s_temp, frames and class_emb, given grad = d loss / d cos (output_mask as above).
  m.def("sti_similarity_fused_bwd(Tensor grad, Tensor s_temp, Tensor frames, Tensor class_emb, float eps, "
        "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(stzsar, CPU, m) {
  m.impl("temporal_saliency_fused_fwd", &stzsar::temporal_saliency_fused_fwd_cpu);
  m.impl("temporal_saliency_fused_bwd", &stzsar::temporal_saliency_fused_bwd_cpu);
  m.impl("sti_similarity_fused_fwd", &stzsar::sti_similarity_fused_fwd_cpu);
  m.impl("sti_similarity_fused_bwd", &stzsar::sti_similarity_fused_bwd_cpu);
}

TORCH_LIBRARY_IMPL(stzsar, Meta, m) {
  m.impl("temporal_saliency_fused_fwd", &stzsar::temporal_saliency_fused_fwd_meta);
  m.impl("temporal_saliency_fused_bwd", &stzsar::temporal_saliency_fused_bwd_meta);
  m.impl("sti_similarity_fused_fwd", &stzsar::sti_similarity_fused_fwd_meta);
  m.impl("sti_similarity_fused_bwd", &stzsar::sti_similarity_fused_bwd_meta);
}
