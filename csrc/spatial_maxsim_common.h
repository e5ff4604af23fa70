// Shape, dtype and device checks shared by the CPU, CUDA and Meta kernels of
// stzsar::spatial_maxsim_fused_fwd / spatial_maxsim_fused_bwd (see csrc/ops.cpp for the schemas).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <limits>

namespace stzsar {
namespace maxsim {
// Internal linkage: every translation unit (CPU, CUDA glue, Meta) keeps its own copy, so no inline
// definition is merged across objects at link time.
namespace {

// Sizes of one call: patches [B, T, Np, D], words [C, Nw, D].
struct Sizes {
  int64_t B, T, Np, D, C, Nw;
};

inline bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

inline void check_device(const at::Tensor& t, const char* op, const char* name, c10::DeviceType device) {
  TORCH_CHECK(t.device().type() == device, op, ": ", name, " must be a ", c10::DeviceTypeName(device, /*lower_case=*/true),
              " tensor, got one on ", t.device());
}

// Checks of the forward inputs; returns the sizes. `device` is the dispatch key's device type.
inline Sizes check_forward(const at::Tensor& patches, const at::Tensor& words, const at::Tensor& word_mask,
                           c10::DeviceType device) {
  constexpr const char* op = "stzsar::spatial_maxsim_fused_fwd";
  TORCH_CHECK(patches.dim() == 4, op, ": patches must be [B, T, Np, D], got shape ", patches.sizes());
  TORCH_CHECK(words.dim() == 3, op, ": words must be [C, Nw, D], got shape ", words.sizes());
  TORCH_CHECK(word_mask.dim() == 2, op, ": word_mask must be [C, Nw], got shape ", word_mask.sizes());
  TORCH_CHECK(patches.size(3) == words.size(2), op, ": patches and words must share D, got ", patches.size(3),
              " and ", words.size(2));
  TORCH_CHECK(word_mask.size(0) == words.size(0) && word_mask.size(1) == words.size(1), op,
              ": word_mask must be [C, Nw] = ", words.sizes().slice(0, 2), ", got ", word_mask.sizes());
  TORCH_CHECK(is_supported_dtype(patches.scalar_type()), op,
              ": patches must be float32, float16 or bfloat16, got ", patches.scalar_type());
  TORCH_CHECK(words.scalar_type() == patches.scalar_type(), op, ": words (", words.scalar_type(),
              ") must have the dtype of patches (", patches.scalar_type(), ")");
  TORCH_CHECK(word_mask.scalar_type() == at::kBool, op, ": word_mask must be bool, got ",
              word_mask.scalar_type());
  check_device(patches, op, "patches", device);
  check_device(words, op, "words", device);
  check_device(word_mask, op, "word_mask", device);
  TORCH_CHECK(words.device() == patches.device() && word_mask.device() == patches.device(), op,
              ": patches, words and word_mask must be on one device, got ", patches.device(), ", ",
              words.device(), " and ", word_mask.device());
  TORCH_CHECK(patches.is_contiguous() && words.is_contiguous() && word_mask.is_contiguous(), op,
              ": patches, words and word_mask must be contiguous");
  const Sizes s{patches.size(0), patches.size(1), patches.size(2), patches.size(3), words.size(0), words.size(1)};
  // The winner index k * Nw + l is stored as int32.
  TORCH_CHECK(s.Np * s.Nw <= std::numeric_limits<int32_t>::max(), op, ": Np * Nw = ", s.Np * s.Nw,
              " does not fit the int32 winner index");
  return s;
}

// Checks of the backward inputs; returns the sizes.
inline Sizes check_backward(const at::Tensor& grad, const at::Tensor& patches, const at::Tensor& words,
                            const at::Tensor& index, c10::DeviceType device) {
  constexpr const char* op = "stzsar::spatial_maxsim_fused_bwd";
  TORCH_CHECK(patches.dim() == 4, op, ": patches must be [B, T, Np, D], got shape ", patches.sizes());
  TORCH_CHECK(words.dim() == 3, op, ": words must be [C, Nw, D], got shape ", words.sizes());
  TORCH_CHECK(patches.size(3) == words.size(2), op, ": patches and words must share D, got ", patches.size(3),
              " and ", words.size(2));
  const Sizes s{patches.size(0), patches.size(1), patches.size(2), patches.size(3), words.size(0), words.size(1)};
  const std::vector<int64_t> bct{s.B, s.C, s.T};
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(bct), op, ": grad must be [B, C, T] = ", at::IntArrayRef(bct),
              ", got ", grad.sizes());
  TORCH_CHECK(index.sizes() == at::IntArrayRef(bct), op, ": index must be [B, C, T] = ", at::IntArrayRef(bct),
              ", got ", index.sizes());
  TORCH_CHECK(grad.scalar_type() == at::kFloat, op, ": grad must be float32, got ", grad.scalar_type());
  TORCH_CHECK(index.scalar_type() == at::kInt, op, ": index must be int32, got ", index.scalar_type());
  TORCH_CHECK(is_supported_dtype(patches.scalar_type()), op,
              ": patches must be float32, float16 or bfloat16, got ", patches.scalar_type());
  TORCH_CHECK(words.scalar_type() == patches.scalar_type(), op, ": words (", words.scalar_type(),
              ") must have the dtype of patches (", patches.scalar_type(), ")");
  check_device(grad, op, "grad", device);
  check_device(patches, op, "patches", device);
  check_device(words, op, "words", device);
  check_device(index, op, "index", device);
  TORCH_CHECK(grad.device() == patches.device() && words.device() == patches.device() &&
                  index.device() == patches.device(),
              op, ": grad, patches, words and index must be on one device");
  TORCH_CHECK(grad.is_contiguous() && patches.is_contiguous() && words.is_contiguous() && index.is_contiguous(),
              op, ": grad, patches, words and index must be contiguous");
  return s;
}

}  // namespace
}  // namespace maxsim
}  // namespace stzsar
