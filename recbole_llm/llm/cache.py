"""Content-addressed on-disk store for expensive, reusable results.

An entry's key is a hash of everything that shapes it (dataset, fields,
model, settings), so a changed setting never reads a stale entry.  Every
write goes to a temporary file that is renamed into place, so a killed write
leaves nothing readable; batch jobs store each finished chunk the same way
and resume from the first missing chunk.  Arrays are stored as ``.npz`` and
read with ``allow_pickle=False``; nothing is ever unpickled.
"""
import hashlib
import json
import os
import tempfile

import numpy as np
from tqdm import tqdm


def _canonical(parts) -> str:
    return json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))


def atomic_write(path: str, write) -> None:
    """Call ``write(file_object)`` on a temp file, then rename it to ``path``."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
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


class Cache:
    """``Cache(root)``; ``key = cache.key("kind", dataset=..., **settings)``."""

    def __init__(self, root: str):
        self.root = os.path.abspath(os.path.expanduser(root))

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
            if os.path.isfile(part):
                with open(part, encoding="utf-8") as f:
                    out = json.load(f)
            else:
                out = list(fn(inputs[start:start + batch_size]))
                if len(out) != len(inputs[start:start + batch_size]):
                    raise ValueError(f"{desc or key}: a batch returned {len(out)} results "
                                     f"for {len(inputs[start:start + batch_size])} inputs")
                atomic_write(part, lambda f, out=out: f.write(json.dumps(out).encode()))
            results.extend(out)
        self.save_json(key, results)
        for name in os.listdir(parts_dir) if os.path.isdir(parts_dir) else []:
            os.remove(os.path.join(parts_dir, name))
        if os.path.isdir(parts_dir):
            os.rmdir(parts_dir)
        return results
