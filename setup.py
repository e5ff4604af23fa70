"""Build and install stzsar.

The extension ``stzsar._C`` holds the fused kernels of the STI op:
- CPU sources (``csrc/*.cpp``, ``csrc/cpu/*.cpp``) are always built, with OpenMP;
- CUDA sources (``csrc/cuda/*``) are built whenever nvcc is found. ``STZSAR_CUDA=1`` forces them
  (and fails loudly without nvcc), ``STZSAR_CUDA=0`` skips them. Architectures come from
  ``TORCH_CUDA_ARCH_LIST`` (default ``8.0;9.0``).

Install with ``pip install --no-build-isolation -e .`` so the extension is built against the
torch already installed (build isolation would fetch another one).
"""

import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _cuda_home():
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if candidate and os.path.exists(os.path.join(candidate, "bin", "nvcc")):
            return candidate
    return None


def _nvidia_wheel_includes():
    """Headers that the pip CUDA wheels ship (cusparse.h, cublas_v2.h, ...); torch's CUDA headers need them."""
    found = []
    for path in sys.path:
        for sub in ("nvidia/cu13/include", "nvidia/cuda_runtime/include"):
            candidate = os.path.join(path, sub)
            if os.path.isdir(candidate):
                found.append(candidate)
    return found


def _extensions():
    flag = os.environ.get("STZSAR_CUDA", "auto").strip().lower()
    cuda_home = _cuda_home()
    if flag in ("1", "true", "yes") and cuda_home is None:
        raise RuntimeError("STZSAR_CUDA=1 but nvcc was not found (set CUDA_HOME)")
    want_cuda = cuda_home is not None and flag not in ("0", "false", "no")
    if want_cuda:
        os.environ.setdefault("CUDA_HOME", cuda_home)
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")

    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    cpu_sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    cxx_flags = ["-O3", "-std=c++20"] + openmp  # torch >= 2.10 headers need C++20
    if not want_cuda:
        return [
            CppExtension(
                "stzsar._C",
                cpu_sources,
                extra_compile_args={"cxx": cxx_flags},
                extra_link_args=openmp,
            )
        ]
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cpp") + glob.glob("csrc/cuda/*.cu"))
    return [
        CUDAExtension(
            "stzsar._C",
            cpu_sources + cuda_sources,
            include_dirs=_nvidia_wheel_includes(),
            define_macros=[("STZSAR_WITH_CUDA", "1")],
            extra_compile_args={
                "cxx": cxx_flags,
                "nvcc": ["-O3", "-std=c++20", "-lineinfo"],
            },
            extra_link_args=openmp,
        )
    ]


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    class OptionalBuildExtension(BuildExtension):
        """Builds the kernels; where no compiler works the package still installs (PyTorch fallback),
        unless ``STZSAR_REQUIRE_EXTENSION=1`` (CI sets it) asks for a hard failure."""

        def run(self):
            try:
                super().run()
            except Exception as error:  # compiler missing or broken
                if os.environ.get("STZSAR_REQUIRE_EXTENSION", "0") == "1":
                    raise
                print(
                    "WARNING: stzsar: building the extension stzsar._C failed "
                    f"({type(error).__name__}: {error}); installing without the fused kernels. "
                    "Set STZSAR_REQUIRE_EXTENSION=1 to make this an error.",
                    file=sys.stderr,
                )

    return {"build_ext": OptionalBuildExtension.with_options(use_ninja=True)}


setup(
    name="stzsar",
    version="0.1.0",
    description="Zero-shot video action recognition with CLIP, descriptive attributes and a fused "
    "spatio-temporal interaction module",
    long_description=open(os.path.join(ROOT, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # kernels/ is installed as stzsar.kernels through the symbolic link stzsar/kernels -> ../kernels,
    # which also makes it importable from a plain checkout (e.g. after build_ext --inplace).
    packages=find_packages(include=["stzsar", "stzsar.*"]),
    package_data={"stzsar": ["model_configs/*.json", "configs/*.yaml"]},
    ext_modules=_extensions(),
    cmdclass=_cmdclass(),
    install_requires=[
        "torch>=2.6",
        "torchvision>=0.21",
        "open_clip_torch>=2.24",
        "numpy>=1.24",
        "av>=12",
        "tqdm>=4.60",
        "pyyaml>=6",
    ],
    extras_require={
        "triton": ["triton>=3.2"],
        "llm": ["openai>=1.40"],
        "dali": ["nvidia-dali-cuda130"],
        "test": ["pytest>=7", "pytest-benchmark>=4"],
    },
    entry_points={"console_scripts": ["stzsar=stzsar.cli.main:main"]},
)
