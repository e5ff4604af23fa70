"""Which device a process runs on: one rule for training, evaluation, prediction and DALI decoding.

Under ``torchrun`` every rank takes the GPU of its ``LOCAL_RANK`` (the process group binds it, and
NCCL refuses two ranks on one GPU). A launcher that gives each rank its own GPUs through
``CUDA_VISIBLE_DEVICES`` leaves fewer visible devices than local ranks: the rank's GPU is then
the current one (GPU 0 of what it sees, unless the caller chose another). Without a launcher the
local rank is 0.

Kept free of the training and evaluation layers so that both (and the data layer) import it.
"""

from __future__ import annotations

import torch


def rank_gpu(local_rank: int = 0) -> int:
    """The CUDA device index of the process with ``local_rank``: that index when so many GPUs are
    visible, else the current device (one visible GPU per rank)."""
    if 0 <= local_rank < torch.cuda.device_count():
        return int(local_rank)
    return int(torch.cuda.current_device())


def resolve_device(name: str = "auto", local_rank: int = 0, distributed: bool = False,
                   setting: str = "device") -> torch.device:
    """The device ``name`` means for this process.

    ``auto``: the rank's GPU (:func:`rank_gpu`) when CUDA is available, else the CPU; ``cuda``:
    the rank's GPU; ``cuda:N``: GPU ``N``, which under a launcher (``distributed``) must be the
    rank's GPU, else ``ValueError`` says so (another GPU would put two ranks on one device, or
    leave the process group bound to a GPU the model is not on). ``setting`` names the option in
    messages (``train.device``, ``--device``).
    """
    if name == "auto":
        return torch.device("cuda", rank_gpu(local_rank)) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{setting}={name} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"{setting}={name} but CUDA is not available here; use {setting}=cpu or auto")
        gpu = rank_gpu(local_rank)
        if device.index is None:
            device = torch.device("cuda", gpu)
        elif distributed and device.index != gpu:
            raise ValueError(
                f"{setting}={name} conflicts with torchrun: the rank with LOCAL_RANK={local_rank} "
                f"runs on cuda:{gpu} (each rank takes the GPU of its local rank); set {setting}=cuda "
                f"or auto, and choose GPUs with CUDA_VISIBLE_DEVICES"
            )
    return device
