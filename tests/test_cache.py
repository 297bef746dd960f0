"""Cache and answer-store hygiene: a torn answers line does not swallow the next
record, files are group-readable, stale temp litter is swept (live writers'
kept), and batch jobs tolerate a concurrent run cleaning up the same job."""
import json
import os
import shutil
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from recbole_llm.llm import cache as cache_module
from recbole_llm.llm.cache import Cache, atomic_write
from recbole_llm.llm.client import CachedClient, LLMClient


class FakeClient(LLMClient):
    def __init__(self):
        self.asked = []

    @property
    def identity(self):
        return "fake"

    def complete(self, prompts, max_new_tokens=64, temperature=0.0):
        self.asked.extend(prompts)
        return [f"ans:{p}" for p in prompts]


@pytest.fixture
def umask():
    """Sets the process umask for one test (files' modes depend on it)."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def _age(path, seconds):
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_torn_answers_line_does_not_swallow_the_next_record(tmp_path):
    first = CachedClient(FakeClient(), str(tmp_path), show_progress=False)
    assert first.complete(["a"]) == ["ans:a"]
    with open(first.path, "a") as f:
        f.write('{"k": "deadbeef", "v": "half an ans')       # a killed run, no newline
    second = CachedClient(FakeClient(), str(tmp_path), show_progress=False)
    assert second.complete(["b", "c"]) == ["ans:b", "ans:c"] and second.calls == 2
    third = CachedClient(FakeClient(), str(tmp_path), show_progress=False)
    assert third.complete(["a", "b", "c"]) == ["ans:a", "ans:b", "ans:c"]
    assert third.calls == 0 and third.client.asked == []
    lines = open(first.path).read().split("\n")
    assert lines[-1] == "" and lines[1].startswith('{"k": "deadbeef"')
    assert [json.loads(line)["v"] for line in lines[2:-1]] == ["ans:b", "ans:c"]


def test_answers_and_cache_files_follow_the_umask(tmp_path, umask):
    cached = CachedClient(FakeClient(), str(tmp_path / "answers"), show_progress=False)
    cached.complete(["a"])
    assert _mode(cached.path) == 0o644
    cache = Cache(str(tmp_path / "cache"))
    cache.save_json("j", [1])
    cache.save_arrays("a", x=np.ones(2))
    for name in ("j.json", "a.npz"):
        assert _mode(tmp_path / "cache" / name) == 0o644     # mkstemp would give 0600
    umask(0o027)
    atomic_write(str(tmp_path / "cache" / "g.bin"), lambda f: f.write(b"x"))
    assert _mode(tmp_path / "cache" / "g.bin") == 0o640


def test_stale_temp_litter_is_swept_and_live_writers_are_kept(tmp_path):
    dead, me = _dead_pid(), os.getpid()
    names = {
        ".tmp-k2j4x9q1emb-abc.npz": True,          # old mkstemp name, an hour old: litter
        f".tmp-{dead}-00ff-emb-abc.npz": True,      # dead writer, old
        f"tok-abc.tmp-{dead}": True,                # a dead run's tokenizer folder, old
        f".tmp-{dead}-11ee-emb-new.npz": False,     # fresh: may still be in use
        f".tmp-{me}-22dd-emb-live.npz": False,      # old but its writer is alive
        f"tok-live.tmp-{me}": False,
        "emb-abc.npz": False,                       # a real entry, however old
    }
    for name in names:
        if name.startswith("tok-"):
            os.makedirs(tmp_path / name)
            (tmp_path / name / "tokenizer.json").write_text("{}")
        else:
            (tmp_path / name).write_bytes(b"x")
    parts = tmp_path / "job-b3-n9.parts"
    parts.mkdir()
    (parts / f".tmp-{dead}-33cc-000000000003.json").write_bytes(b"[1")
    (parts / "000000000000.json").write_text("[1, 2, 3]")
    for name in [*names, f"job-b3-n9.parts/.tmp-{dead}-33cc-000000000003.json",
                 "job-b3-n9.parts/000000000000.json"]:
        if "new" not in name:
            _age(tmp_path / name, 2 * 3600)
    Cache(str(tmp_path))
    left = set(os.listdir(tmp_path))
    assert left == {n for n, stale in names.items() if not stale} | {"job-b3-n9.parts"}
    assert os.listdir(parts) == ["000000000000.json"]         # the resumable chunk stays
    Cache(str(tmp_path / "not-yet-created"))                   # no cache folder: no error


def test_batch_job_survives_a_concurrent_run_cleaning_up(tmp_path, monkeypatch):
    cache = Cache(str(tmp_path))
    real_remove = os.remove

    def racing_remove(path):  # the other run removes the parts folder first
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)
        real_remove(path)

    monkeypatch.setattr(cache_module.os, "remove", racing_remove)
    out = cache.map_batches("job", list(range(7)), lambda b: [x + 1 for x in b], 3,
                            show_progress=False)
    monkeypatch.undo()
    assert out == list(range(1, 8)) and os.listdir(tmp_path) == ["job-b3-n7.json"]


def test_batch_job_finished_meanwhile_by_another_run(tmp_path):
    cache = Cache(str(tmp_path))
    calls = []

    def slow(batch):  # while this run works on its 2nd chunk another run does the whole job
        calls.append(list(batch))
        if len(calls) == 2:
            other = Cache(str(tmp_path)).map_batches("job", list(range(7)), lambda b: [-1] * len(b),
                                                     3, show_progress=False)
            assert other == [0, 1, 2, -1, -1, -1, -1]             # it reused our first chunk
        return list(batch)

    out = cache.map_batches("job", list(range(7)), slow, 3, show_progress=False)
    assert out == list(range(7)) and calls == [[0, 1, 2], [3, 4, 5], [6]]
    assert os.listdir(tmp_path) == ["job-b3-n7.json"]


def test_finishing_job_leaves_a_live_writers_temp_file_alone(tmp_path):
    cache = Cache(str(tmp_path))
    parts = tmp_path / "job-b2-n4.parts"
    parts.mkdir()
    live = parts / f".tmp-{os.getpid()}-aa00-000000000002.json"   # another run, mid-write
    live.write_bytes(b"[")
    assert cache.map_batches("job", [1, 2, 3, 4], list, 2, show_progress=False) == [1, 2, 3, 4]
    assert os.listdir(parts) == [live.name]
