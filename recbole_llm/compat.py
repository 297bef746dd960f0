"""Make RecBole 1.2.1 run on today's NumPy, SciPy, pandas and torch.

Applied once, on ``import recbole_llm``, before any RecBole module is used.
Each shim restores exactly what RecBole calls and nothing more; anything
that would otherwise fail *silently* is refused loudly instead.

* NumPy 2 removed ``np.float_``, ``np.complex_`` and ``np.unicode_``, which
  ``recbole.config.Config.compatibility_settings`` reads: alias them back.
* SciPy >= 1.13 removed ``dok_matrix._update``, which LightGCN, NGCF, NCL,
  SpectralCF, GCMC, KGIN and MCCLK use to fill their adjacency matrix: give it
  back as a bulk update of the matrix' key store.
* pandas 3 turns RecBole's ``fillna(inplace=True)`` into a silent no-op and
  changes ``Series.agg(len)``: we require pandas < 3 and refuse to run on
  pandas 3, or with pandas' copy-on-write mode switched on.
* ``recbole.quick_start`` imports ray, which is never imported here; the
  plugin has its own quick start (``recbole_llm.quick_start``).
* torch >= 2.6 loads checkpoints weights-only; the plugin trainer writes
  checkpoints that load that way (``recbole_llm.trainer``).
"""
import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp

_NUMPY_ALIASES = {"float_": np.float64, "complex_": np.complex128, "unicode_": np.str_}


def _patch_numpy():
    for name, value in _NUMPY_ALIASES.items():
        if name not in np.__dict__:
            setattr(np, name, value)


def _dok_update(self, data):
    """Bulk insert ``{(row, col): value}``, as SciPy < 1.13 did."""
    self._dict.update(data)


def _patch_scipy():
    if not hasattr(sp.dok_matrix, "_update"):
        sp.dok_matrix._update = _dok_update


def check_pandas_version():
    """RecBole 1.2.1 mis-reads data under pandas 3: refuse it at import."""
    major = int(pd.__version__.split(".")[0])
    if major >= 3:
        raise ImportError(
            f"recbole-llm needs pandas < 3 (found {pd.__version__}): under pandas 3 "
            "RecBole 1.2.1 silently leaves NaNs in datasets and mis-reads token_seq "
            "fields. Install the tested pin: pip install 'pandas==2.3.3'."
        )


def check_pandas_copy_on_write():
    """RecBole fills NaNs in place; copy-on-write mode makes that a no-op."""
    if pd.get_option("mode.copy_on_write") is True:
        raise RuntimeError(
            "pandas copy-on-write mode is on (pd.options.mode.copy_on_write=True): "
            "RecBole's in-place NaN filling would silently do nothing. Switch it off."
        )


def _quiet_known_warnings():
    """Warnings RecBole triggers on every run that this module already handles."""
    # pandas 2.x chained-assignment notice for RecBole's fillna(inplace=True):
    # it still fills under pandas < 3, which check_pandas_version enforces.
    warnings.filterwarnings("ignore", category=FutureWarning,
                            module=r"recbole\.data\.dataset\.dataset")
    # torch.cuda.amp.GradScaler renamed; RecBole's trainer still uses the old name.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.trainer\.trainer")


def apply():
    _quiet_known_warnings()
    _patch_numpy()
    _patch_scipy()
    check_pandas_version()


apply()
