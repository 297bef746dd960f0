import os
import shutil
import sys

import pytest

import recbole_llm  # noqa: F401  (compat shims first)
from recbole_llm.utils import set_cpu_threads

TESTS = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(TESTS, "data")
REPO = os.path.dirname(TESTS)

set_cpu_threads(1)

# Settings that make the tiny slices train in seconds.
ML_TINY = {
    "data_path": DATA,
    "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]},
    "item_text_fields": ["title", "release_year", "genre"],
    "show_progress": False,
    "state": "WARNING",
    "eval_batch_size": 4096,
    "train_batch_size": 512,
}
BEAUTY_TINY = dict(ML_TINY, load_col={"inter": ["user_id", "item_id", "timestamp"]},
                   item_text_fields=["title", "brand", "categories"])


@pytest.fixture(autouse=True)
def isolated_run(tmp_path, monkeypatch):
    """RecBole writes log/ and saved/ in the cwd and reads sys.argv as options."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["recbole-llm-tests"])
    yield tmp_path


@pytest.fixture
def data_copy(tmp_path):
    """A writable copy of the test datasets, for tests that damage files."""
    dst = tmp_path / "data"
    shutil.copytree(DATA, dst)
    return dst
