"""Triton kernels of the STI ops (installed as ``stzsar.kernels``)."""
