// Entry point of the extension stzsar._C: the schemas of the fused spatial max-similarity ops, their
// Meta (shape-only) kernels, and a small Python module so that `import stzsar._C` loads everything.
//
// The CPU kernels live in csrc/cpu/, the CUDA ones in csrc/cuda/ (compiled when STZSAR_WITH_CUDA is
// defined). Other ops of the namespace register their own TORCH_LIBRARY_FRAGMENT in their own files.

#include <torch/extension.h>
#include <torch/library.h>

#include "spatial_maxsim_common.h"

namespace stzsar {
namespace {

std::tuple<at::Tensor, at::Tensor> spatial_maxsim_fused_fwd_meta(const at::Tensor& patches, const at::Tensor& words,
                                                                 const at::Tensor& word_mask) {
  const auto s = maxsim::check_forward(patches, words, word_mask, c10::DeviceType::Meta);
  auto out = at::empty({s.B, s.C, s.T}, patches.options().dtype(at::kFloat));
  auto index = at::empty({s.B, s.C, s.T}, patches.options().dtype(at::kInt));
  return {out, index};
}

std::tuple<at::Tensor, at::Tensor> spatial_maxsim_fused_bwd_meta(const at::Tensor& grad, const at::Tensor& patches,
                                                                 const at::Tensor& words, const at::Tensor& index) {
  maxsim::check_backward(grad, patches, words, index, c10::DeviceType::Meta);
  return {at::empty_like(patches), at::empty_like(words)};
}

}  // namespace
}  // namespace stzsar

TORCH_LIBRARY_FRAGMENT(stzsar, m) {
  // out[b, c, t] = max over valid l, max over k of <patches[b, t, k], words[c, l]> (float32);
  // index[b, c, t] = winning k * Nw + l (int32), the lowest one on ties.
  m.def("spatial_maxsim_fused_fwd(Tensor patches, Tensor words, Tensor word_mask) -> (Tensor, Tensor)");
  // Gradients of out w.r.t. patches and words, given grad = d loss / d out and the winners' index.
  m.def("spatial_maxsim_fused_bwd(Tensor grad, Tensor patches, Tensor words, Tensor index) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(stzsar, Meta, m) {
  m.impl("spatial_maxsim_fused_fwd", &stzsar::spatial_maxsim_fused_fwd_meta);
  m.impl("spatial_maxsim_fused_bwd", &stzsar::spatial_maxsim_fused_bwd_meta);
}

#ifdef STZSAR_WITH_CUDA
#include <string>
#include <tuple>

// The CUDA launchers' headers (plain CUDA runtime declarations): the shared-memory limits of the
// temporal kernels, so that backend="auto" can tell in advance whether a shape runs there, and the
// launch grids of every CUDA kernel, so that tests can check them against CUDA's limits.
#include "cuda/spatial_maxsim_kernel.cuh"
#include "cuda/sti_temporal_kernel.cuh"

namespace stzsar {
namespace {
// The grid (x, y, z) that the launcher of `kernel` uses at these sizes.
std::tuple<int64_t, int64_t, int64_t> cuda_launch_grid(const std::string& kernel, int64_t B, int64_t C, int64_t T,
                                                       int64_t Np, int64_t Nw, int64_t D) {
  const cuda::MaxsimSizes s{B, T, Np, D, C, Nw};
  cuda_grid::Grid g{0, 0, 0};
  if (kernel == "spatial_forward") {
    g = cuda::maxsim_forward_grid(s);
  } else if (kernel == "spatial_grad_patches") {
    g = cuda::maxsim_grad_patches_grid(s);
  } else if (kernel == "spatial_grad_words") {
    g = cuda::maxsim_grad_words_grid(s);
  } else if (kernel == "temporal") {
    g = sti_cuda::temporal_grid(B, C, T, Nw);
  } else if (kernel == "similarity") {
    g = sti_cuda::similarity_grid(B, C);
  } else {
    TORCH_CHECK(false, "unknown kernel '", kernel, "': spatial_forward, spatial_grad_patches, spatial_grad_words, ",
                "temporal or similarity");
  }
  return {g.x, g.y, g.z};
}
}  // namespace
}  // namespace stzsar
#endif

namespace {
bool with_cuda() {
#ifdef STZSAR_WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Fused kernels of stzsar (registered as torch.ops.stzsar.*)";
  m.def("with_cuda", &with_cuda, "True when the extension was compiled with its CUDA kernels");
#ifdef STZSAR_WITH_CUDA
  m.def("cuda_temporal_fits", &stzsar::sti_cuda::temporal_fits, "Whether the CUDA temporal_saliency kernels take T x Nw");
  m.def("cuda_similarity_fits", &stzsar::sti_cuda::similarity_fits, "Whether the CUDA sti_similarity kernels take T frames");
  m.def("cuda_launch_grid", &stzsar::cuda_launch_grid, "The launch grid (x, y, z) of a CUDA kernel at these sizes",
        pybind11::arg("kernel"), pybind11::arg("B"), pybind11::arg("C"), pybind11::arg("T"), pybind11::arg("Np"),
        pybind11::arg("Nw"), pybind11::arg("D"));
#endif
}
