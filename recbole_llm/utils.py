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
