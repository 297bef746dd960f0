"""Small run-time helpers shared by the quick start, models and benchmarks."""
import os

import torch


def set_cpu_threads(n: int) -> None:
    """Use ``n`` intra-op threads (and OpenMP threads for libraries started later).

    On the 2-core machines this project is measured on, one thread is 5-30x
    faster than torch's default for RecBole's small-batch models (README,
    "CPU threads"); large matrix work gains less from it.  ``n <= 0`` keeps
    torch's default.
    """
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
