// CUDA implementations of the fused temporal ops (schemas in csrc/cpu/sti_temporal_cpu.cpp): checks,
// launches of the plain CUDA kernels of sti_temporal_kernel.cu, and the GEMM epilogues (cuBLAS via
// ATen) of the backward passes.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <array>

#include "../sti_temporal_common.h"
#include "sti_temporal_kernel.cuh"

namespace stzsar {
namespace {

// Upper bound on the elements of the backward coefficient buffer (16 MB of fp32), as in Triton.
constexpr int64_t kCoefElements = int64_t{1} << 22;

sti_cuda::ElementType element_type(at::ScalarType type) {
  switch (type) {
    case at::kFloat:
      return sti_cuda::ElementType::kFloat32;
    case at::kHalf:
      return sti_cuda::ElementType::kFloat16;
    case at::kBFloat16:
      return sti_cuda::ElementType::kBFloat16;
    default:
      TORCH_CHECK(false, "stzsar: unsupported feature dtype ", type);
  }
}

void check_launch(cudaError_t error, const char* op) {
  TORCH_CHECK(error == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(error));
}

void check_temporal_limits(const char* op, const sti::TemporalSizes& z) {
  TORCH_CHECK(sti_cuda::temporal_fits(z.T, z.Nw), op, ": T * Nw = ", z.T, " * ", z.Nw,
              " is too large for one block's shared memory (use backend='triton' or 'torch')");
  const cuda_grid::Grid g = sti_cuda::temporal_grid(z.B, z.C, z.T, z.Nw);
  TORCH_CHECK(z.B <= cuda_grid::kMaxYZ, op, ": at most ", cuda_grid::kMaxYZ, " videos per call (grid axis y), got ", z.B);
  TORCH_CHECK(cuda_grid::fits(g), op, ": the launch grid (", g.x, ", ", g.y, ") exceeds CUDA's limits; score fewer classes per call");
}

void check_similarity_limits(const char* op, const sti::SimilaritySizes& z) {
  TORCH_CHECK(sti_cuda::similarity_fits(z.T), op, ": T = ", z.T,
              " frames do not fit one block's shared memory (use backend='triton' or 'torch')");
  const cuda_grid::Grid g = sti_cuda::similarity_grid(z.B, z.C);
  TORCH_CHECK(z.B <= cuda_grid::kMaxYZ, op, ": at most ", cuda_grid::kMaxYZ, " videos per call (grid axis y), got ", z.B);
  TORCH_CHECK(cuda_grid::fits(g), op, ": the launch grid (", g.x, ", ", g.y, ") exceeds CUDA's limits; score fewer classes per call");
}

at::Tensor temporal_saliency_fused_fwd_cuda(const at::Tensor& s_sp, const at::Tensor& frames, const at::Tensor& words,
                                            const at::Tensor& word_mask, double temperature) {
  constexpr const char* op = "stzsar::temporal_saliency_fused_fwd";
  const auto z = sti::check_temporal(op, at::Tensor(), s_sp, frames, words, word_mask, temperature,
                                     c10::DeviceType::CUDA);
  check_temporal_limits(op, z);
  const c10::cuda::CUDAGuard guard(s_sp.device());
  const sti::NoAutocast no_autocast;
  at::Tensor out = at::zeros({z.B, z.C, z.T}, s_sp.options());
  if (out.numel() == 0 || z.Nw == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(s_sp.device().index()).stream();
  check_launch(sti_cuda::temporal_saliency_forward(
                   element_type(frames.scalar_type()), s_sp.data_ptr<float>(), frames.data_ptr(), words.data_ptr(),
                   word_mask.data_ptr<bool>(), {z.B, z.C, z.T, z.Nw, z.D}, static_cast<float>(temperature),
                   out.data_ptr<float>(), stream),
               op);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> temporal_saliency_fused_bwd_cuda(
    const at::Tensor& grad, const at::Tensor& s_sp, const at::Tensor& frames, const at::Tensor& words,
    const at::Tensor& word_mask, double temperature, std::array<bool, 3> output_mask) {
  constexpr const char* op = "stzsar::temporal_saliency_fused_bwd";
  const auto z =
      sti::check_temporal(op, grad, s_sp, frames, words, word_mask, temperature, c10::DeviceType::CUDA);
  check_temporal_limits(op, z);
  const c10::cuda::CUDAGuard guard(s_sp.device());
  const sti::NoAutocast no_autocast;
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // the epilogue GEMMs are not part of any graph
  const int64_t B = z.B, C = z.C, T = z.T, Nw = z.Nw, D = z.D, BT = B * T;
  const auto fopts = s_sp.options().dtype(at::kFloat);
  at::Tensor grad_s = at::zeros({B, C, T}, fopts);
  at::Tensor grad_v = at::zeros({BT, D}, fopts);
  const auto [need_s, need_v, need_a] = output_mask;
  at::Tensor grad_a = at::zeros({need_a ? C * Nw : 0, D}, fopts);
  if (grad_s.numel() > 0 && Nw > 0 && D > 0) {
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(s_sp.device().index()).stream();
    const at::Tensor v32 = frames.detach().reshape({BT, D}).to(at::kFloat);
    const at::Tensor a32 = words.detach().reshape({C * Nw, D}).to(at::kFloat);
    const int64_t per_chunk = std::min<int64_t>(C, std::max<int64_t>(1, kCoefElements / std::max<int64_t>(1, BT * Nw)));
    at::Tensor coef = at::empty({BT, per_chunk * Nw}, fopts);
    for (int64_t c_lo = 0; c_lo < C; c_lo += per_chunk) {
      const int64_t c_hi = std::min(C, c_lo + per_chunk), cols = (c_hi - c_lo) * Nw;
      check_launch(sti_cuda::temporal_saliency_backward_coef(
                       element_type(frames.scalar_type()), grad.data_ptr<float>(), s_sp.data_ptr<float>(),
                       frames.data_ptr(), words.data_ptr(), word_mask.data_ptr<bool>(), {B, C, T, Nw, D},
                       static_cast<float>(temperature), c_lo, c_hi, per_chunk * Nw, grad_s.data_ptr<float>(),
                       coef.data_ptr<float>(), stream),
                   op);
      const at::Tensor chunk = coef.narrow(1, 0, cols);
      if (need_v) grad_v.addmm_(chunk, a32.narrow(0, c_lo * Nw, cols));
      if (need_a) {
        at::Tensor ga = grad_a.narrow(0, c_lo * Nw, cols);
        at::mm_out(ga, chunk.t(), v32);
      }
    }
  }
  return {sti::masked_grad(need_s, grad_s, s_sp), sti::masked_grad(need_v, grad_v.view({B, T, D}), frames),
          sti::masked_grad(need_a, grad_a.view({need_a ? C : 0, Nw, D}), words)};
}

at::Tensor sti_similarity_fused_fwd_cuda(const at::Tensor& s_temp, const at::Tensor& frames,
                                         const at::Tensor& class_emb, double eps) {
  constexpr const char* op = "stzsar::sti_similarity_fused_fwd";
  const auto z = sti::check_similarity(op, at::Tensor(), s_temp, frames, class_emb, eps, c10::DeviceType::CUDA);
  check_similarity_limits(op, z);
  const c10::cuda::CUDAGuard guard(s_temp.device());
  const sti::NoAutocast no_autocast;
  at::Tensor out = at::zeros({z.B, z.C}, s_temp.options());
  if (out.numel() == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(s_temp.device().index()).stream();
  check_launch(sti_cuda::sti_similarity_forward(element_type(frames.scalar_type()), s_temp.data_ptr<float>(),
                                                frames.data_ptr(), class_emb.data_ptr(), {z.B, z.C, z.T, z.D},
                                                static_cast<float>(eps), out.data_ptr<float>(), stream),
               op);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sti_similarity_fused_bwd_cuda(const at::Tensor& grad,
                                                                             const at::Tensor& s_temp,
                                                                             const at::Tensor& frames,
                                                                             const at::Tensor& class_emb, double eps,
                                                                             std::array<bool, 3> output_mask) {
  constexpr const char* op = "stzsar::sti_similarity_fused_bwd";
  const auto z = sti::check_similarity(op, grad, s_temp, frames, class_emb, eps, c10::DeviceType::CUDA);
  check_similarity_limits(op, z);
  const c10::cuda::CUDAGuard guard(s_temp.device());
  const sti::NoAutocast no_autocast;
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto fopts = s_temp.options().dtype(at::kFloat);
  at::Tensor grad_s = at::zeros({z.B, z.C, z.T}, fopts);
  at::Tensor coef = at::zeros({3, z.B, z.C}, fopts);
  if (grad_s.numel() > 0) {
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(s_temp.device().index()).stream();
    check_launch(sti_cuda::sti_similarity_backward_coef(
                     element_type(frames.scalar_type()), grad.data_ptr<float>(), s_temp.data_ptr<float>(),
                     frames.data_ptr(), class_emb.data_ptr(), {z.B, z.C, z.T, z.D}, static_cast<float>(eps),
                     grad_s.data_ptr<float>(), coef.data_ptr<float>(), stream),
                 op);
  }
  const auto [grad_v, grad_z] =
      sti::similarity_epilogue(s_temp.detach(), frames.detach().to(at::kFloat), class_emb.detach().to(at::kFloat),
                               coef[0], coef[1], coef[2], output_mask[1], output_mask[2]);
  return {sti::masked_grad(output_mask[0], grad_s, s_temp), sti::masked_grad(output_mask[1], grad_v, frames),
          sti::masked_grad(output_mask[2], grad_z, class_emb)};
}

}  // namespace
}  // namespace stzsar

TORCH_LIBRARY_IMPL(stzsar, CUDA, m) {
  m.impl("temporal_saliency_fused_fwd", &stzsar::temporal_saliency_fused_fwd_cuda);
  m.impl("temporal_saliency_fused_bwd", &stzsar::temporal_saliency_fused_bwd_cuda);
  m.impl("sti_similarity_fused_fwd", &stzsar::sti_similarity_fused_fwd_cuda);
  m.impl("sti_similarity_fused_bwd", &stzsar::sti_similarity_fused_bwd_cuda);
}
