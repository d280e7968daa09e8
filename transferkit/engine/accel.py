"""Accelerator set-up: device, mixed precision and seeds in one place, and which process is the main one."""

from __future__ import annotations

import os
from typing import Any

import torch


def is_main_process(accelerator: Any | None = None) -> bool:
    """True in the process that writes files and prints results: the only one, or rank 0 under a launcher.

    The one definition transferkit uses. With several processes (``accelerate launch``, ``torchrun``), every
    process runs the same code and only this one may write a bundle, a report or a results line.

    Args:
        accelerator: an :class:`accelerate.Accelerator`. When given, its answer (it knows the process group).
            Without one, the global rank in the ``RANK`` environment variable, which torchrun and
            ``accelerate launch`` set for every process they start; a process nobody launched has none and is
            the main one.

    Returns:
        ``True`` in the main process, ``False`` in the others.

    Examples:

        >>> is_main_process()  # a plain Python process
        True
    """
    if accelerator is not None:
        return bool(accelerator.is_main_process)
    from ..rundir import main_process

    return main_process()


def bf16_supported_on_cpu() -> bool:
    """True when oneDNN has fast bf16 kernels here (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str = "auto", cpu: bool | None = None) -> str:
    """``auto`` -> ``bf16`` where the device computes it natively (CUDA with bf16, or a bf16-capable CPU), else
    ``no``."""
    if precision != "auto":
        from ..errors import check_precision

        return check_precision(precision)
    on_cpu = cpu if cpu is not None else not torch.cuda.is_available()
    if on_cpu:
        return "bf16" if bf16_supported_on_cpu() else "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def make_accelerator(precision: str = "auto", seed: int = 0, cpu: bool | None = None):
    """An :class:`accelerate.Accelerator` with resolved precision and every RNG seeded.

    Under ``accelerate launch`` it picks up the process group the launcher set up; alone it uses one device.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, set_seed

    if cpu is None:
        # On a machine without a GPU say so explicitly: Accelerate only sets up several CPU processes
        # (gloo, under `accelerate launch` or torchrun) when it is told it runs on the CPU.
        cpu = not torch.cuda.is_available()
    mp = resolve_precision(precision, cpu)
    # Accelerate keeps one global state per process. A second run in the same process (a notebook, a
    # comparison of strategies) may ask for another precision: drop the old settings, but keep the process
    # group that `accelerate launch` set up (PartialState).
    if AcceleratorState._shared_state:
        AcceleratorState._reset_state(reset_partial_state=False)
    # gradual unfreezing leaves some parameters without gradients for a while; DDP must expect that
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    # on a GPU, batches from pinned memory (the loaders pin on CUDA: loader_options) are copied asynchronously,
    # overlapping the next copy with the current step; on the CPU there is no copy to overlap
    loading = DataLoaderConfiguration(non_blocking=not cpu)
    acc = Accelerator(mixed_precision=mp, cpu=bool(cpu), kwargs_handlers=[ddp], dataloader_config=loading)
    set_seed(seed)
    return acc


def default_workers(device: torch.device | str, processes: int = 1) -> int:
    """Loader processes per training process when none are asked for: on CUDA ``min(8, cpus - 1)`` shared by the
    processes (the GPU must never wait for a batch; one core stays for the training process itself); on the CPU 0.

    On the CPU the batches come from tensors already decoded in memory (images, token ids, audio windows), so a worker
    only slices and augments, and takes a core from the forward and backward passes it would feed: on 2 cores an
    EfficientNet-Lite0 fine-tuning epoch ran at 19.8 images/s with 0 workers, 15.6 with 1 and 15.8 with 2
    (benchmarks/throughput.py ``--only image --parts epoch --workers 0,1,2``).
    """
    if torch.device(device).type != "cuda":
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 1) // max(1, processes))


def loader_options(workers: int, device: torch.device | str) -> dict:
    """``DataLoader`` keyword arguments for ``workers`` loader processes feeding ``device``: pinned memory on CUDA
    (what makes the non-blocking copies of :func:`make_accelerator` asynchronous), workers kept alive across epochs
    when there are any (each would otherwise start again, re-importing torch, every epoch)."""
    return {"num_workers": workers, "pin_memory": torch.device(device).type == "cuda",
            "persistent_workers": workers > 0}
