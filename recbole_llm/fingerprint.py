"""Content fingerprints and settings for cache keys.

A cached result (text embeddings, a trained conventional model, an item
index, a tuned LLM, a pre-trained graph expert) must be keyed by everything
that shapes it, or a changed input silently reads a stale entry.  So keys
are built from

* content, never paths: :func:`dataset_fingerprint` hashes every table of a
  dataset (interactions with their labels after thresholding, user and item
  features, the raw tokens behind their ids, item text, raw ratings) and
  :func:`path_fingerprint` hashes the bytes of a model folder or checkpoint;
* settings taken from the config as a whole, not from a list of the keys
  someone remembered: :func:`settings_fingerprint` takes every key except
  :data:`RUN_ONLY_KEYS` (logging, output paths, threads, batch sizes of
  inference: they never change a result) and the keys the caller names as
  acting only after the cached stage.  A key forgotten in those lists makes
  a key too specific (a needless recomputation), never a stale hit.
  :func:`recbole_settings` narrows this to the keys RecBole's own models and
  trainer can read, for the conventional models the plugin trains.
"""
import hashlib
import json
import os

import numpy as np

# Keys that never change what a cached stage computes.
RUN_ONLY_KEYS = frozenset({
    "state", "show_progress", "checkpoint_dir", "llm_cache_dir", "resume_checkpoint",
    "cpu_threads", "gpu_id", "use_gpu", "device", "worker", "log_wandb", "wandb_project",
    "save_dataset", "dataset_save_path", "save_dataloaders", "dataloaders_save_path",
    "strict_options", "metric_decimal_place", "loss_decimal_place", "single_spec",
    "local_rank", "nproc", "ip", "port", "world_size", "offset", "group_offset", "data_path",
    "config_files", "eval_batch_size", "llm_eval_batch_size", "beam_batch_size",
    "llm_generate_batch_size", "text_encoder_batch_size", "llm_api_key_env",
    "llm_api_timeout", "llm_api_max_retries", "llm_api_batch_size",
})
# Keys naming files or folders: their content goes into a key, not their path.
PATH_KEYS = ("llm_path", "text_encoder_path", "behavior_checkpoint", "base_checkpoint")


def _hash_array(h, values) -> None:
    array = np.asarray(values)
    if array.dtype == object:  # token lists, strings
        h.update(json.dumps([v.tolist() if hasattr(v, "tolist") else v for v in array.ravel()],
                            default=str).encode())
    else:
        h.update(str(array.dtype).encode() + str(array.shape).encode())
        h.update(np.ascontiguousarray(array).tobytes())


def _hash_table(h, table) -> None:
    if table is None:
        h.update(b"none")
        return
    columns = table.columns if hasattr(table, "columns") else table.interaction.keys()
    for name in sorted(columns):
        h.update(f"|{name}|".encode())
        column = table[name]
        _hash_array(h, column.numpy() if hasattr(column, "numpy") else column)


def dataset_fingerprint(dataset) -> str:
    """Hash of everything a RecBole dataset (or one of its splits) holds."""
    h = hashlib.sha256()
    for name in ("inter_feat", "user_feat", "item_feat"):
        h.update(f"[{name}]".encode())
        _hash_table(h, getattr(dataset, name, None))
    for field in sorted(getattr(dataset, "field2id_token", {}) or {}):
        h.update(f"<{field}>".encode())
        _hash_array(h, dataset.field2id_token[field])
    extra = getattr(dataset, "content_fingerprint_parts", None)
    if extra is not None:  # text datasets: item text and raw ratings
        for part in extra():
            h.update(part)
    return h.hexdigest()[:24]


_PATH_MEMO = {}


def path_fingerprint(path, memo_dir: str = None) -> str:
    """Hash of a file's bytes, or of every file (relative name and bytes) under a
    folder, hidden folders (``.git``, ``.cache``) and temp files left out;
    ``None`` for an empty setting.

    Reading a 7B model's 13 GB takes a while, so the digest is remembered per
    (path, every file's size and modification time): in this process, and on
    disk under ``memo_dir`` (the cache root) for later runs, as build tools do.
    """
    if not path:
        return None
    path = os.path.abspath(os.path.expanduser(str(path)))
    if os.path.isfile(path):
        files = [(path, "")]
    elif os.path.isdir(path):
        files = []
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files += [(os.path.join(root, n), os.path.relpath(os.path.join(root, n), path))
                      for n in names if not n.startswith(".tmp-")]
        files.sort(key=lambda f: f[1])
    else:
        raise FileNotFoundError(f"cannot fingerprint {path}: no such file or folder")
    stats = [(rel, os.stat(full).st_size, os.stat(full).st_mtime_ns) for full, rel in files]
    memo = hashlib.sha256(json.dumps([path, stats]).encode()).hexdigest()[:32]
    memo_file = os.path.join(memo_dir, "fingerprints", memo) if memo_dir else None
    if memo not in _PATH_MEMO and memo_file and os.path.isfile(memo_file):
        with open(memo_file, encoding="utf-8") as f:
            _PATH_MEMO[memo] = f.read().strip()
    if memo not in _PATH_MEMO:
        h = hashlib.sha256()
        for full, rel in files:
            h.update(rel.encode() + b"\0")
            with open(full, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
            h.update(b"\0")
        _PATH_MEMO[memo] = h.hexdigest()[:24]
        if memo_file:
            from recbole_llm.llm.cache import atomic_write
            atomic_write(memo_file, lambda f: f.write(_PATH_MEMO[memo].encode()))
    return _PATH_MEMO[memo]


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


def settings_fingerprint(config, exclude=(), only=None) -> dict:
    """The config's settings that can shape a cached stage, paths as content.

    ``exclude``: keys that act only after the stage; ``only``: restrict to
    these keys (RecBole's own, see :func:`recbole_settings`)."""
    final = config.final_config_dict
    keys = set(final) if only is None else set(only) & set(final)
    keys -= RUN_ONLY_KEYS | set(exclude)
    memo_dir = final.get("llm_cache_dir") or os.path.join(".cache", "recbole_llm")
    settings = {}
    for key in sorted(keys):
        value = final[key]
        settings[key] = (path_fingerprint(value, memo_dir) if key in PATH_KEYS and value
                         else _plain(value))
    return settings


def recbole_keys(model_name: str) -> set:
    """Every key RecBole's own models, datasets and trainers declare: those its
    ``model_name`` and ``Trainer`` can read."""
    import yaml
    from recbole.utils.argument_list import (dataset_arguments, evaluation_arguments,
                                             general_arguments, training_arguments)

    from recbole_llm.paths import recbole_file, recbole_model_yaml

    keys = set(general_arguments + training_arguments + evaluation_arguments + dataset_arguments)
    keys |= {"MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "model", "dataset"}
    for path in [recbole_file("overall.yaml"), *recbole_model_yaml(model_name),
                 recbole_file("dataset", "sample.yaml")]:
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                keys |= set(yaml.safe_load(f) or {})
    return keys


def recbole_settings(config, model_name: str) -> dict:
    """:func:`settings_fingerprint` over the keys RecBole's ``model_name`` and
    trainer can read (a plugin model's own keys never reach them)."""
    return settings_fingerprint(config, only=recbole_keys(model_name))


def array_fingerprint(array) -> str:
    """Hash of an array's dtype, shape and values (embeddings an index is built from)."""
    h = hashlib.sha256()
    _hash_array(h, array)
    return h.hexdigest()[:24]


def module_fingerprint(module) -> str:
    """Hash of every tensor of a torch module's state (names, dtypes, shapes,
    values): a model's weights as they are, trained or loaded."""
    import torch

    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:24]


CODE_LIBRARIES = ("torch", "recbole", "transformers", "peft", "numpy", "scipy", "scikit-learn")


def code_fingerprint() -> str:
    """Hash of the plugin's own source (every ``.py`` of the installed package,
    by content; the property files are in the settings) and the versions of the
    libraries a run's numbers come from: a stored result (a comparison run)
    made by other code is not reused."""
    from importlib import metadata

    import recbole_llm

    global _CODE_FINGERPRINT
    if _CODE_FINGERPRINT is None:
        root = os.path.dirname(os.path.abspath(recbole_llm.__file__))
        h = hashlib.sha256()
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    h.update(os.path.relpath(path, root).encode() + b"\0")
                    with open(path, "rb") as f:
                        h.update(f.read())
        for library in CODE_LIBRARIES:
            try:
                version = metadata.version(library)
            except metadata.PackageNotFoundError:
                version = "absent"
            h.update(f"|{library}={version}".encode())
        _CODE_FINGERPRINT = h.hexdigest()[:24]
    return _CODE_FINGERPRINT


_CODE_FINGERPRINT = None
