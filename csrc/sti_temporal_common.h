// Checks and GEMM epilogues shared by the CPU, CUDA and Meta kernels of the fused temporal ops
// (schemas in csrc/cpu/sti_temporal_cpu.cpp):
//
//   temporal_saliency_fused_fwd(s_sp [B,C,T] f32, frames [B,T,D], words [C,Nw,D], word_mask [C,Nw] bool,
//                               temperature) -> S_temp [B,C,T] f32
//   temporal_saliency_fused_bwd(grad [B,C,T] f32, s_sp, frames, words, word_mask, temperature,
//                               output_mask) -> (grad_s_sp, grad_frames, grad_words)
//   sti_similarity_fused_fwd(s_temp [B,C,T] f32, frames [B,T,D], class_emb [C,D], eps) -> cos [B,C] f32
//   sti_similarity_fused_bwd(grad [B,C] f32, s_temp, frames, class_emb, eps, output_mask)
//                               -> (grad_s_temp, grad_frames, grad_class_emb)
//
// output_mask (bool[3]) says which gradients are wanted; the others come back as empty tensors
// (shape [0]) and cost nothing.
// frames, words and class_emb share one dtype: float32, float16 or bfloat16 (math in float32).
#pragma once

#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <cstdint>
#include <tuple>
#include <vector>

namespace stzsar {
namespace sti {

// The kernels choose their own compute dtypes (float32 math, float32 results). Under autocast the
// ATen GEMMs they call would otherwise be recast to bf16/fp16 (and the in-place fp32 epilogue
// would fail on the mixed dtypes): every kernel entry point holds one of these.
struct NoAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{c10::autocast_dispatch_keyset};
};

struct TemporalSizes {
  int64_t B, C, T, Nw, D;
};

struct SimilaritySizes {
  int64_t B, C, T, D;
};

inline bool is_feature_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

inline void check_on(const at::Tensor& t, const char* op, const char* name, c10::DeviceType device,
                     const at::Tensor& first) {
  TORCH_CHECK(t.device().type() == device, op, ": ", name, " must be a ", c10::DeviceTypeName(device),
              " tensor, got one on ", t.device());
  TORCH_CHECK(t.device() == first.device(), op, ": ", name, " is on ", t.device(), " but the other inputs on ",
              first.device());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

inline void check_shape(const at::Tensor& t, const char* op, const char* name, std::vector<int64_t> shape,
                        const char* pretty) {
  TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), op, ": ", name, " must be ", pretty, " = ",
              at::IntArrayRef(shape), ", got ", t.sizes());
}

// Checks of the temporal saliency inputs (grad is checked when defined); returns the sizes.
inline TemporalSizes check_temporal(const char* op, const at::Tensor& grad, const at::Tensor& s_sp,
                                    const at::Tensor& frames, const at::Tensor& words,
                                    const at::Tensor& word_mask, double temperature, c10::DeviceType device) {
  TORCH_CHECK(s_sp.dim() == 3, op, ": s_sp must be [B, C, T], got shape ", s_sp.sizes());
  TORCH_CHECK(frames.dim() == 3, op, ": frames must be [B, T, D], got shape ", frames.sizes());
  TORCH_CHECK(words.dim() == 3, op, ": words must be [C, Nw, D], got shape ", words.sizes());
  const TemporalSizes s{s_sp.size(0), s_sp.size(1), s_sp.size(2), words.size(1), frames.size(2)};
  check_shape(frames, op, "frames", {s.B, s.T, s.D}, "[B, T, D]");
  check_shape(words, op, "words", {s.C, s.Nw, s.D}, "[C, Nw, D]");
  check_shape(word_mask, op, "word_mask", {s.C, s.Nw}, "[C, Nw]");
  TORCH_CHECK(s_sp.scalar_type() == at::kFloat, op, ": s_sp must be float32, got ", s_sp.scalar_type());
  TORCH_CHECK(is_feature_dtype(frames.scalar_type()), op, ": frames must be float32, float16 or bfloat16, got ",
              frames.scalar_type());
  TORCH_CHECK(words.scalar_type() == frames.scalar_type(), op, ": words (", words.scalar_type(),
              ") must have the dtype of frames (", frames.scalar_type(), ")");
  TORCH_CHECK(word_mask.scalar_type() == at::kBool, op, ": word_mask must be bool, got ", word_mask.scalar_type());
  TORCH_CHECK(temperature > 0, op, ": temperature must be positive, got ", temperature);
  check_on(s_sp, op, "s_sp", device, s_sp);
  check_on(frames, op, "frames", device, s_sp);
  check_on(words, op, "words", device, s_sp);
  check_on(word_mask, op, "word_mask", device, s_sp);
  if (grad.defined()) {
    check_shape(grad, op, "grad", {s.B, s.C, s.T}, "[B, C, T]");
    TORCH_CHECK(grad.scalar_type() == at::kFloat, op, ": grad must be float32, got ", grad.scalar_type());
    check_on(grad, op, "grad", device, s_sp);
  }
  return s;
}

// Checks of the similarity inputs (grad is checked when defined); returns the sizes.
inline SimilaritySizes check_similarity(const char* op, const at::Tensor& grad, const at::Tensor& s_temp,
                                        const at::Tensor& frames, const at::Tensor& class_emb, double eps,
                                        c10::DeviceType device) {
  TORCH_CHECK(s_temp.dim() == 3, op, ": s_temp must be [B, C, T], got shape ", s_temp.sizes());
  TORCH_CHECK(frames.dim() == 3, op, ": frames must be [B, T, D], got shape ", frames.sizes());
  const SimilaritySizes s{s_temp.size(0), s_temp.size(1), s_temp.size(2), frames.size(2)};
  check_shape(frames, op, "frames", {s.B, s.T, s.D}, "[B, T, D]");
  check_shape(class_emb, op, "class_emb", {s.C, s.D}, "[C, D]");
  TORCH_CHECK(s_temp.scalar_type() == at::kFloat, op, ": s_temp must be float32, got ", s_temp.scalar_type());
  TORCH_CHECK(is_feature_dtype(frames.scalar_type()), op, ": frames must be float32, float16 or bfloat16, got ",
              frames.scalar_type());
  TORCH_CHECK(class_emb.scalar_type() == frames.scalar_type(), op, ": class_emb (", class_emb.scalar_type(),
              ") must have the dtype of frames (", frames.scalar_type(), ")");
  TORCH_CHECK(eps >= 0, op, ": eps must be non-negative, got ", eps);
  check_on(s_temp, op, "s_temp", device, s_temp);
  check_on(frames, op, "frames", device, s_temp);
  check_on(class_emb, op, "class_emb", device, s_temp);
  if (grad.defined()) {
    check_shape(grad, op, "grad", {s.B, s.C}, "[B, C]");
    TORCH_CHECK(grad.scalar_type() == at::kFloat, op, ": grad must be float32, got ", grad.scalar_type());
    check_on(grad, op, "grad", device, s_temp);
  }
  return s;
}

// The GEMM part of the similarity backward, from the per-(video, class) coefficients of the fused
// kernels: with a = d loss / d numerator, w = (d loss / d |f_st|) / |f_st|, u = (d loss / d |z|) / |z|
// (all [B, C], float32; w = u = 0 where the eps floor is active),
//   grad_z[c] = sum_{b,t} a[b,c] s[b,c,t] v[b,t] + (sum_b u[b,c]) z[c]
//   grad_v[b] = sum_c a[b,c] s[b,c,:] z[c]^T + M[b] V[b],   M[b] = sum_c w[b,c] s[b,c,:] s[b,c,:]^T (T x T)
// Only [B, C, T] and [B, T, T] temporaries: f_st [B, C, D] is never formed.
// Gradients not wanted (need_v / need_z false) come back undefined.
inline std::tuple<at::Tensor, at::Tensor> similarity_epilogue(const at::Tensor& s_temp, const at::Tensor& frames32,
                                                              const at::Tensor& class32, const at::Tensor& a,
                                                              const at::Tensor& w, const at::Tensor& u, bool need_v,
                                                              bool need_z) {
  const NoAutocast no_autocast;
  const int64_t B = s_temp.size(0), C = s_temp.size(1), T = s_temp.size(2), D = frames32.size(2);
  const at::Tensor q_t = (s_temp * a.unsqueeze(-1)).transpose(1, 2);  // [B, T, C]
  at::Tensor grad_v, grad_z;
  if (need_z) {
    grad_z = at::mm(q_t.reshape({B * T, C}).t(), frames32.reshape({B * T, D}));
    grad_z.add_(class32 * u.sum(0).unsqueeze(-1));
  }
  if (need_v) {
    grad_v = at::matmul(q_t, class32);  // [B, T, D]
    const at::Tensor m = at::bmm((s_temp * w.unsqueeze(-1)).transpose(1, 2), s_temp);  // [B, T, T]
    grad_v.baddbmm_(m, frames32);
  }
  return {grad_v, grad_z};
}

// The gradient to return for an input: `grad` cast to the input's dtype, or an empty tensor when
// output_mask leaves it out.
inline at::Tensor masked_grad(bool needed, const at::Tensor& grad, const at::Tensor& like) {
  if (!needed) return at::empty({0}, like.options());
  return grad.scalar_type() == like.scalar_type() ? grad : grad.to(like.scalar_type());
}

}  // namespace sti
}  // namespace stzsar
