"""Small run-time helpers shared by the quick start, models and benchmarks."""
import os

import torch


def configure_cpu(n: int) -> None:
    """Flush denormal floats to zero, and use ``n`` intra-op threads (and
    OpenMP threads for libraries started later).

    Denormals (below 1.2e-38, e.g. attention weights of exp(-90) once a model
    attends sharply) make MKL's sgemm about 85x slower: an EAGERLLM epoch on
    Beauty slowed from 0.6 to 8.6 s per step as it trained (README, "CPU
    threads").  Flushing them changes no result above that size.
    On the 2-core machines this project is measured on, one thread is 5-30x
    faster than torch's default for RecBole's small-batch models; large
    matrix work gains less from it.  ``n <= 0`` keeps torch's default.
    """
    torch.set_flush_denormal(True)
    if not n or n <= 0:
        return
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ["MKL_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:
        pass  # already fixed once parallel work has started


def forked_rng(device):
    """A context after which torch's random state (the accelerator's too) is as
    before: a cached stage and a computed one leave the same state behind, so
    a run's later draws do not depend on what the cache held."""
    device = torch.device(device)
    if device.type == "cpu":
        return torch.random.fork_rng(devices=[])
    return torch.random.fork_rng(devices=[device.index or 0], device_type=device.type)
