// Torch glue of the CUDA kernels of stzsar::spatial_maxsim_fused_fwd / _bwd: input checks, outputs,
// the current stream and device, error checks. The kernels are in spatial_maxsim_kernel.cu.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../spatial_maxsim_common.h"
#include "spatial_maxsim_kernel.cuh"

namespace stzsar {
namespace {

cuda::ElementType element_type(at::ScalarType type) {
  switch (type) {
    case at::kFloat:
      return cuda::ElementType::kFloat32;
    case at::kHalf:
      return cuda::ElementType::kFloat16;
    case at::kBFloat16:
      return cuda::ElementType::kBFloat16;
    default:
      TORCH_CHECK(false, "stzsar::spatial_maxsim: unsupported dtype ", type);
  }
}

cuda::MaxsimSizes kernel_sizes(const maxsim::Sizes& s) { return {s.B, s.T, s.Np, s.D, s.C, s.Nw}; }

// A clear error for a grid past CUDA's limits (a launch past them fails with "invalid configuration").
void check_grid(const cuda_grid::Grid& g, const char* op, const char* remedy) {
  TORCH_CHECK(cuda_grid::fits(g), op, ": the launch grid (", g.x, ", ", g.y, ", ", g.z, ") exceeds CUDA's limits (x <= ",
              cuda_grid::kMaxX, ", y and z <= ", cuda_grid::kMaxYZ, "); ", remedy);
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err),
              err == cudaErrorInvalidConfiguration ? " (sizes beyond the kernel's grid limits)" : "");
}

std::tuple<at::Tensor, at::Tensor> spatial_maxsim_fused_fwd_cuda(const at::Tensor& patches, const at::Tensor& words,
                                                                 const at::Tensor& word_mask) {
  const auto s = maxsim::check_forward(patches, words, word_mask, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(patches.device());
  auto out = at::empty({s.B, s.C, s.T}, patches.options().dtype(at::kFloat));
  auto index = at::empty({s.B, s.C, s.T}, patches.options().dtype(at::kInt));
  if (out.numel() == 0) return {out, index};
  check_grid(cuda::maxsim_forward_grid(kernel_sizes(s)), "stzsar::spatial_maxsim_fused_fwd",
             "score fewer frames x classes per call");
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(patches.device().index()).stream();
  check_launch(cuda::spatial_maxsim_forward(element_type(patches.scalar_type()), patches.data_ptr(), words.data_ptr(),
                                            word_mask.data_ptr<bool>(), kernel_sizes(s), out.data_ptr<float>(),
                                            index.data_ptr<int32_t>(), stream),
               "stzsar::spatial_maxsim_fused_fwd");
  return {out, index};
}

std::tuple<at::Tensor, at::Tensor> spatial_maxsim_fused_bwd_cuda(const at::Tensor& grad, const at::Tensor& patches,
                                                                 const at::Tensor& words, const at::Tensor& index) {
  const auto s = maxsim::check_backward(grad, patches, words, index, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(patches.device());
  // The kernels accumulate and write fp32; fp16/bf16 gradients are rounded once at the end.
  const bool fp32 = patches.scalar_type() == at::kFloat;
  const auto f32 = patches.options().dtype(at::kFloat);
  auto grad_patches = fp32 ? at::empty_like(patches) : at::empty(patches.sizes(), f32);
  auto grad_words = fp32 ? at::empty_like(words) : at::empty(words.sizes(), f32);
  if (grad_patches.numel() > 0 || grad_words.numel() > 0) {
    check_grid(cuda::maxsim_grad_patches_grid(kernel_sizes(s)), "stzsar::spatial_maxsim_fused_bwd",
               "use fewer frames per call or a smaller D");
    check_grid(cuda::maxsim_grad_words_grid(kernel_sizes(s)), "stzsar::spatial_maxsim_fused_bwd",
               "use fewer classes per call or a smaller D");
    // The kernels also zero the rows that no winner reaches.
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(patches.device().index()).stream();
    check_launch(cuda::spatial_maxsim_backward(element_type(patches.scalar_type()), grad.data_ptr<float>(),
                                               patches.data_ptr(), words.data_ptr(), index.data_ptr<int32_t>(),
                                               kernel_sizes(s), grad_patches.data_ptr<float>(),
                                               grad_words.data_ptr<float>(), stream),
                 "stzsar::spatial_maxsim_fused_bwd");
  }
  if (!fp32) {
    grad_patches = grad_patches.to(patches.scalar_type());
    grad_words = grad_words.to(words.scalar_type());
  }
  return {grad_patches, grad_words};
}

}  // namespace
}  // namespace stzsar

TORCH_LIBRARY_IMPL(stzsar, CUDA, m) {
  m.impl("spatial_maxsim_fused_fwd", &stzsar::spatial_maxsim_fused_fwd_cuda);
  m.impl("spatial_maxsim_fused_bwd", &stzsar::spatial_maxsim_fused_bwd_cuda);
}
