"""Build and install stzsar.

The extension ``stzsar._C`` holds the fused kernels of the STI op:
- CPU sources (``csrc/*.cpp``, ``csrc/cpu/*.cpp``) are always built, with OpenMP;
- CUDA sources (``csrc/cuda/*``) are built whenever nvcc is found. ``STZSAR_CUDA=1`` forces them
  (and fails loudly without nvcc), ``STZSAR_CUDA=0`` skips them. Architectures come from
  ``TORCH_CUDA_ARCH_LIST`` (default ``8.0;9.0``).

Install with ``pip install --no-build-isolation -e .`` (or without ``-e``) so the extension is
built against the torch already installed. Project metadata lives in ``pyproject.toml``.
"""

import functools
import glob
import os
import sys

from setuptools import setup

REQUIRE_EXTENSION = os.environ.get("STZSAR_REQUIRE_EXTENSION", "0") == "1"


@functools.lru_cache(maxsize=None)
def _torch_available() -> bool:
    """An isolated build environment has no torch: then the package installs without stzsar._C."""
    try:
        import torch  # noqa: F401
    except ImportError:
        if REQUIRE_EXTENSION:
            raise RuntimeError(
                "STZSAR_REQUIRE_EXTENSION=1 but torch is not importable in the build environment; "
                "install torch first and build with `pip install --no-build-isolation .`"
            )
        print(
            "WARNING: stzsar: torch is not importable in the build environment, so the extension "
            "stzsar._C is not built (the PyTorch code runs instead). Install torch first and use "
            "`pip install --no-build-isolation .` to build it.",
            file=sys.stderr,
        )
        return False
    return True


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
    if not _torch_available():
        return []
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
    if not _torch_available():
        return {}
    from torch.utils.cpp_extension import BuildExtension

    class OptionalBuildExtension(BuildExtension):
        """Builds the kernels; where no compiler works the package still installs (PyTorch fallback),
        unless ``STZSAR_REQUIRE_EXTENSION=1`` (CI sets it) asks for a hard failure."""

        def run(self):
            try:
                super().run()
            except Exception as error:  # compiler missing or broken
                if REQUIRE_EXTENSION:
                    raise
                print(
                    "WARNING: stzsar: building the extension stzsar._C failed "
                    f"({type(error).__name__}: {error}); installing without the fused kernels. "
                    "Set STZSAR_REQUIRE_EXTENSION=1 to make this an error.",
                    file=sys.stderr,
                )

    return {"build_ext": OptionalBuildExtension.with_options(use_ninja=True)}


setup(
    # Metadata, dependencies and the console script are in pyproject.toml.
    ext_modules=_extensions(),
    cmdclass=_cmdclass(),
)
