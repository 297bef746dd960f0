"""Training in several processes, RecBole's way (``--nproc=2``, ``world_size``, ``ip``, ``port``).

RecBole 1.2.1 spawns one process per GPU, joins them in an NCCL group,
gives each process its share of every batch (``DistributedSampler``),
averages the gradients (``DistributedDataParallel``) and the evaluation
metrics.  The plugin keeps that and adds CPU processes in a gloo group where
no GPU is used (``Config._init_device``), a checkpoint name shared by every
rank, a barrier before a rank reloads what rank 0 wrote, and evaluation
without the sampler's padding rows (``recbole_llm.trainer``); the helpers
here let a model's stages before training run in rank 0 first
(:func:`main_process_first`) and its losses cover the whole batch
(:func:`gather_rows`, :func:`global_sum`).  Several machines: run the
command on each with the same ``world_size``, ``ip`` and ``port`` and its own
``group_offset`` (the first rank of that machine).
"""
import contextlib
import copy
import datetime
import itertools
import os

import torch

from recbole_llm.errors import InputError


def world_size() -> int:
    """Processes training together (1 outside a process group)."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_rows(*tensors: torch.Tensor):
    """Every process's rows of each tensor (same row count per process), in rank
    order, with gradient back to each process's own rows of float tensors
    (in-batch negatives of the whole batch, not of one process's share); and
    where this process's rows start.  Shares may differ in size (padded for the
    collective; the sizes are exchanged once).  Every process must call it."""
    if world_size() == 1:
        return (*tensors, 0)
    import torch.distributed.nn.functional as dist_nn

    dist = torch.distributed
    local = len(tensors[0])
    sizes = [torch.zeros(1, dtype=torch.long, device=tensors[0].device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([local], device=tensors[0].device))
    sizes = [int(n) for n in sizes]
    gathered = []
    for tensor in tensors:
        padded = torch.cat([tensor, tensor.new_zeros((max(sizes) - local, *tensor.shape[1:]))])
        if tensor.is_floating_point():
            parts = dist_nn.all_gather(padded)
        else:  # ids: no gradient
            parts = [torch.empty_like(padded) for _ in sizes]
            dist.all_gather(parts, padded)
        gathered.append(torch.cat([part[:n] for part, n in zip(parts, sizes)]))
    return (*gathered, sum(sizes[:dist.get_rank()]))


def rank() -> int:
    """This process's rank in the group (0 outside a group)."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def barrier() -> None:
    """Wait for every process of the group (nothing outside a group)."""
    if world_size() == 1:
        return
    dist = torch.distributed
    if dist.get_backend() == "nccl":  # the GPU this process uses, not one torch guesses
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


_FIRST_STAGES = itertools.count()
#: how long the other processes wait for rank 0's stages (a cold cache: behaviour
#: models, text encodings, an LLM's instruction tuning); a collective would give up
#: after the group's timeout (NCCL: 10 minutes)
MAIN_FIRST_TIMEOUT = datetime.timedelta(hours=48)


@contextlib.contextmanager
def main_process_first():
    """Rank 0 runs the block first, the others after it: what rank 0 computed
    and cached (tokenizers, indexes, pre-trained experts, behaviour models)
    the others read from the cache instead of computing it again and racing
    it.  The block must not call collectives (rank 0 runs it alone).  The
    others wait on the group's key-value store, not a collective, so a long
    first stage does not run into the collectives' timeout."""
    if world_size() == 1:
        yield
        return
    from torch.distributed.distributed_c10d import _get_default_store

    key = f"recbole_llm/main_process_first/{next(_FIRST_STAGES)}"
    store = _get_default_store()
    if rank() != 0:
        store.wait([key], MAIN_FIRST_TIMEOUT)
        yield
        return
    try:
        yield
    finally:
        store.set(key, "done")  # also when rank 0 failed: the others fail on their own


def single_process_config(config):
    """A copy of ``config`` for work one process does alone, on whole splits (an
    inner model trained in rank 0 and cached): RecBole's ``single_spec`` on, so
    its loaders do not shard and its trainer does not average gradients."""
    sub = copy.copy(config)
    sub.final_config_dict = dict(config.final_config_dict)
    sub.final_config_dict["single_spec"] = True
    return sub


def broadcast_value(value):
    """Rank 0's ``value`` (a picklable object) on every process."""
    if world_size() == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def global_sum(value: torch.Tensor) -> torch.Tensor:
    """``value`` summed over the processes (no gradient; itself outside a group)."""
    if world_size() == 1:
        return value
    total = value.detach().clone()
    torch.distributed.all_reduce(total)
    return total


def launch_settings(raw: dict) -> dict:
    """The launch keys popped from the parsed options (raw strings), checked."""
    from recbole_llm.options import pop_int

    settings = {"nproc": pop_int(raw, "nproc", 1),
                "world_size": pop_int(raw, "world_size", -1, low=-1),
                "ip": str(raw.pop("ip", "localhost")), "port": str(raw.pop("port", "5678")),
                "offset": pop_int(raw, "group_offset", 0, low=0)}
    if settings["world_size"] == -1:
        settings["world_size"] = settings["nproc"]
    if settings["offset"] + settings["nproc"] > settings["world_size"]:
        raise InputError(f"group_offset {settings['offset']} + nproc {settings['nproc']} exceeds "
                         f"world_size {settings['world_size']}")
    return settings


def check_launch(config, settings) -> None:
    """Refuse, before any process starts, what several processes cannot run."""
    model_class = config.model_class
    if not getattr(model_class, "supports_multi_process", True):
        raise InputError(f"{config['model']} trains in one process only (--nproc=1): its stages "
                         "outside RecBole's training loop are not multi-process yet")
    if config["device"].type == "cuda":
        gpus = [g for g in str(config["gpu_id"]).split(",") if g.strip()]
        if len(gpus) < settings["nproc"]:
            raise InputError(f"--nproc={settings['nproc']} on GPUs needs as many GPUs in "
                             f"--gpu_id (got '{config['gpu_id']}'), or --use_gpu=False for "
                             "CPU processes")


def _rank_main(rank, model, dataset, config_file_list, options, settings, queue):
    from recbole_llm.quick_start import run_recbole_llm

    try:
        result = run_recbole_llm(model=model, dataset=dataset, config_file_list=config_file_list,
                                 config_dict=dict(settings, local_rank=rank), argv=options)
        if rank == 0:
            queue.put(result)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run_distributed(model, dataset, config_file_list, options, settings):
    """Train and test in ``settings['nproc']`` processes of a group of
    ``world_size``; rank 0's result (``run_recbole_llm``'s dict), ``None`` on the
    machines without rank 0."""
    import torch.multiprocessing as mp

    queue = mp.get_context("spawn").SimpleQueue()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_rank_main, args=(model, dataset, config_file_list, options, settings, queue),
             nprocs=settings["nproc"], join=True)
    return None if queue.empty() else queue.get()
