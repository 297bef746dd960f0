"""Content-addressed on-disk store for expensive, reusable results.

An entry's key is a hash of everything that shapes it (dataset, fields,
model, settings), so a changed setting never reads a stale entry.  Every
write goes to a temporary file that is renamed into place, so a killed write
leaves nothing readable (stale temp files are swept when a ``Cache`` is
opened); batch jobs store each finished chunk the same way
and resume from the first missing chunk.  Arrays are stored as ``.npz`` and
read with ``allow_pickle=False``; nothing is ever unpickled.
"""
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import time

import numpy as np
from tqdm import tqdm


def _canonical(parts) -> str:
    return json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))


def atomic_write(path: str, write) -> None:
    """Call ``write(file_object)`` on a temp file, then rename it to ``path``.

    The temp file is created with ``open()``'s usual mode (0o666 less the
    umask; ``mkstemp`` would give 0600), so cache files stay group-readable,
    and its name carries the writer's pid so litter can be told from a live
    write (see ``remove_stale_temps``).
    """
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{secrets.token_hex(4)}-"
                               f"{os.path.basename(path)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# ``.tmp-<pid>-...`` (atomic_write; older versions: ``.tmp-<random>...``) and
# ``<name>.tmp-<pid>`` (tokenizer folders, checkpoints)
_TEMP_NAME = re.compile(r"^\.tmp-(?:(\d+)-)?|\.tmp-(\d+)$")


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # os.kill(pid, 0) would terminate the process on Windows: keep the file
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process (or an odd number): assume alive
    return True


def remove_stale_temps(folder: str, max_age: float = 3600.0) -> list:
    """Delete temp litter left in ``folder`` by killed writes; the names removed.

    An entry goes only when it is older than ``max_age`` seconds and, if its
    name carries a pid, no such process is alive here: a live writer's temp
    file is never touched.  Races with a concurrent cleaner are ignored.
    """
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        match = _TEMP_NAME.search(name)
        if not match:
            continue
        path = os.path.join(folder, name)
        pid = match.group(1) or match.group(2)
        try:
            if now - os.lstat(path).st_mtime < max_age or (pid and _pid_alive(int(pid))):
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
            removed.append(name)
        except OSError:
            continue  # vanished meanwhile, or not ours to delete
    return removed


class Cache:
    """``Cache(root)``; ``key = cache.key("kind", dataset=..., **settings)``."""

    def __init__(self, root: str):
        self.root = os.path.abspath(os.path.expanduser(root))
        # killed writes leave temp files behind: sweep the stale ones (root and job parts)
        remove_stale_temps(self.root)
        with contextlib.suppress(OSError):  # no cache yet
            for name in os.listdir(self.root):
                if name.endswith(".parts"):
                    remove_stale_temps(os.path.join(self.root, name))

    @classmethod
    def from_config(cls, config) -> "Cache":
        return cls(config["llm_cache_dir"] or os.path.join(".cache", "recbole_llm"))

    def key(self, kind: str, **parts) -> str:
        digest = hashlib.sha256(_canonical(parts).encode()).hexdigest()[:20]
        return f"{kind}-{digest}"

    def _path(self, key: str, suffix: str) -> str:
        return os.path.join(self.root, f"{key}{suffix}")

    # --- arrays -----------------------------------------------------------
    def has_arrays(self, key: str) -> bool:
        return os.path.isfile(self._path(key, ".npz"))

    def save_arrays(self, key: str, **arrays) -> None:
        atomic_write(self._path(key, ".npz"),
                     lambda f: np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()}))

    def load_arrays(self, key: str) -> dict:
        with np.load(self._path(key, ".npz"), allow_pickle=False) as data:
            return {name: data[name] for name in data.files}

    # --- JSON ---------------------------------------------------------------
    def has_json(self, key: str) -> bool:
        return os.path.isfile(self._path(key, ".json"))

    def save_json(self, key: str, obj) -> None:
        atomic_write(self._path(key, ".json"), lambda f: f.write(json.dumps(obj).encode()))

    def load_json(self, key: str):
        with open(self._path(key, ".json"), encoding="utf-8") as f:
            return json.load(f)

    def get_or_compute_arrays(self, key: str, compute) -> dict:
        """Arrays stored under ``key``, computing and storing them once."""
        if not self.has_arrays(key):
            self.save_arrays(key, **compute())
        return self.load_arrays(key)

    # --- resumable batch jobs ----------------------------------------------
    def map_batches(self, key: str, inputs: list, fn, batch_size: int, desc: str = "",
                    show_progress: bool = True) -> list:
        """``fn`` over ``inputs`` in fixed chunks; JSON-able outputs, one per input.

        Each finished chunk is stored atomically; an interrupted job resumes at
        the first chunk not yet stored.  The chunk size is part of the key, so
        a different size never mixes with stored chunks.
        """
        key = f"{key}-b{batch_size}-n{len(inputs)}"
        if self.has_json(key):
            return self.load_json(key)
        parts_dir = self._path(key, ".parts")
        results = []
        starts = range(0, len(inputs), batch_size)
        for start in tqdm(starts, desc=desc or key, disable=not show_progress, unit="batch"):
            part = os.path.join(parts_dir, f"{start:012d}.json")
            try:
                with open(part, encoding="utf-8") as f:
                    out = json.load(f)
            except FileNotFoundError:  # not done yet (or a finished concurrent run removed it)
                out = None
            if out is None:
                out = list(fn(inputs[start:start + batch_size]))
                if len(out) != len(inputs[start:start + batch_size]):
                    raise ValueError(f"{desc or key}: a batch returned {len(out)} results "
                                     f"for {len(inputs[start:start + batch_size])} inputs")
                try:
                    atomic_write(part, lambda f, out=out: f.write(json.dumps(out).encode()))
                except FileNotFoundError:
                    pass  # a concurrent run removed the folder; the chunk is kept in memory
            results.extend(out)
        self.save_json(key, results)
        _remove_parts(parts_dir)
        return results


def _remove_parts(parts_dir: str) -> None:
    """Delete a finished job's chunks.  Concurrent runs of the same job may be
    deleting them too, or still writing a chunk (its temp file is left alone,
    and then the folder, which that run removes when it finishes)."""
    try:
        names = os.listdir(parts_dir)
    except FileNotFoundError:
        return
    for name in names:
        if not name.startswith(".tmp-"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(parts_dir, name))
    remove_stale_temps(parts_dir)
    with contextlib.suppress(OSError):  # gone already, or a live writer's temp file is in it
        os.rmdir(parts_dir)
