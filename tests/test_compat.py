import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recbole_llm import compat


def test_numpy_aliases_restored():
    assert np.float_ is np.float64 and np.complex_ is np.complex128 and np.unicode_ is np.str_


def test_dok_update_fills_matrix_like_old_scipy():
    a = sp.dok_matrix((3, 3), dtype=np.float32)
    a._update({(0, 1): 1, (2, 0): 1})
    dense = a.toarray()
    assert dense[0, 1] == 1 and dense[2, 0] == 1 and dense.sum() == 2
    assert (a > 0).sum() == 2


def test_pandas_3_refused(monkeypatch):
    monkeypatch.setattr(pd, "__version__", "3.1.1")
    with pytest.raises(ImportError, match="pandas < 3"):
        compat.check_pandas_version()


def test_copy_on_write_refused():
    with pd.option_context("mode.copy_on_write", True):
        with pytest.raises(RuntimeError, match="copy-on-write"):
            compat.check_pandas_copy_on_write()


def test_no_ray_import():
    code = ("import sys, recbole_llm.quick_start, recbole_llm.config; "
            "print(any(m == 'ray' or m.startswith('ray.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
