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
* ``recbole.quick_start`` imports ray 2.6, which imports ``pkg_resources``
  (gone from setuptools >= 81) and reads ``np.bool8`` (gone from NumPy 2):
  where ``pkg_resources`` is missing, a stand-in gives ray exactly the four
  names it uses (any other name is an error that says so), and ``np.bool8``
  is aliased, so ``from recbole.quick_start import run_recbole`` works.
* RecBole's ``Config`` calls ``eval`` on every command-line value and
  ``config_dict`` string and reads yaml with ``FullLoader``: its own
  ``run_recbole`` reads them as data too (``recbole_llm.options``).
* torch >= 2.6 loads checkpoints weights-only; the plugin trainer writes
  checkpoints that load that way (``recbole_llm.trainer``), and RecBole's own
  ``get_trainer`` (``run_recbole``, ``objective_function``) returns trainers
  that do too; RecBole's ``Trainer`` built directly saves and resumes that way.
* RecBole's ``load_data_and_model`` unpickles a ``Config`` and builds RecBole's
  models only: ``recbole.quick_start`` hands out the plugin's
  (``recbole_llm.serving.load_data_and_model``), which rebuilds any model,
  plugin or RecBole, from a weights-only checkpoint.
* ``HyperTuning``'s exhaustive search hands hyperopt >= 0.2.7 a NumPy
  ``RandomState`` where it needs a ``Generator``, and its result table reads
  ``np.str``: that module sees a NumPy with both fixed; its params file is
  read as data (``recbole_llm.hyper.read_params_file``), never ``eval``ed.
"""
import types
import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp

_NUMPY_ALIASES = {"float_": np.float64, "complex_": np.complex128, "unicode_": np.str_,
                  "bool8": np.bool_}


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


class _DistributionNotFound(Exception):
    pass


class _Distribution:
    """What ray reads of ``pkg_resources.get_distribution(name)``."""

    def __init__(self, name):
        from importlib import metadata
        try:
            self.version = metadata.version(name)
        except metadata.PackageNotFoundError:
            raise _DistributionNotFound(name) from None
        self.project_name = self.key = name


def _missing_name(name):
    raise AttributeError(
        f"pkg_resources.{name}: this is recbole-llm's stand-in for ray's imports "
        "(get_distribution, require, DistributionNotFound, packaging); for the real "
        "pkg_resources install setuptools < 81")


def _patch_pkg_resources():
    """A minimal ``pkg_resources`` for ray 2.6's imports, only where none is installed."""
    import importlib.util
    import sys

    if "pkg_resources" in sys.modules or importlib.util.find_spec("pkg_resources"):
        return
    import packaging
    import packaging.version

    module = types.ModuleType("pkg_resources", "recbole-llm's stand-in (see compat.py)")
    module.DistributionNotFound = _DistributionNotFound
    module.get_distribution = _Distribution
    module.require = lambda name: [_Distribution(name)]
    module.packaging = packaging
    module.__getattr__ = _missing_name
    vendor = types.ModuleType("pkg_resources._vendor")
    vendor.packaging = packaging
    module._vendor = vendor
    sys.modules.update({"pkg_resources": module, "pkg_resources._vendor": vendor,
                        "pkg_resources._vendor.packaging": packaging,
                        "pkg_resources._vendor.packaging.version": packaging.version})


def _patch_recbole_config():
    """RecBole's own ``Config`` (``run_recbole``, ``objective_function``) reads values
    as data too: literals instead of ``eval``, yaml with a safe loader."""
    from recbole.config import Config

    from recbole_llm.options import SafeConfigLoader, parse_value

    Config._build_yaml_loader = lambda self: SafeConfigLoader
    Config._convert_config_dict = lambda self, values: {
        key: parse_value(value) for key, value in values.items()}


def _patch_recbole_trainers():
    """RecBole's ``get_trainer`` hands out trainers with weights-only checkpoints,
    so ``run_recbole`` can reload the checkpoint it just wrote under torch >= 2.6."""
    import sys

    import recbole.utils
    import recbole.utils.utils as utils

    if getattr(utils.get_trainer, "_weights_only", False):
        return
    original = utils.get_trainer

    def get_trainer(model_type, model_name):
        from recbole_llm.trainer import with_weights_only_checkpoints
        return with_weights_only_checkpoints(original(model_type, model_name))

    get_trainer._weights_only = True
    utils.get_trainer = recbole.utils.get_trainer = get_trainer
    quick_start = sys.modules.get("recbole.quick_start.quick_start")
    if quick_start is not None:  # imported before recbole_llm: its own reference too
        quick_start.get_trainer = get_trainer


def _patch_recbole_trainer_checkpoints():
    """A RecBole ``Trainer`` built directly (``Trainer(config, model)``, not through
    ``get_trainer``) saves and resumes the plugin's way too: its checkpoints hold
    plain data, so its own ``evaluate`` reloads them under torch's weights-only
    default (RecBole pickles its ``Config`` into them)."""
    from recbole.trainer.trainer import Trainer

    from recbole_llm.trainer import WeightsOnlyCheckpointMixin as plugin

    for name in ("_checkpoint_state", "_save_checkpoint", "resume_checkpoint"):
        setattr(Trainer, name, getattr(plugin, name))


def _use_plugin_loader(module) -> None:
    from recbole_llm.serving import load_data_and_model

    module.load_data_and_model = load_data_and_model


class _PatchAfterImport:
    """A meta-path finder that runs ``patch(module)`` once ``name`` has been
    executed, before any importer copies names out of it (``recbole.quick_start``
    is imported lazily: it pulls in ray)."""

    def __init__(self, name, patch):
        self.name, self.patch = name, patch

    def find_spec(self, fullname, path=None, target=None):
        import importlib.machinery

        if fullname != self.name:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader, patch = spec.loader, self.patch

        class Loader:
            def create_module(self, spec):
                return loader.create_module(spec)

            def exec_module(self, module):
                loader.exec_module(module)
                patch(module)

        spec.loader = Loader()
        return spec


def _patch_recbole_loader():
    import sys

    name = "recbole.quick_start.quick_start"
    if name in sys.modules:  # imported before recbole_llm
        _use_plugin_loader(sys.modules[name])
        package = sys.modules.get("recbole.quick_start")
        if package is not None:
            _use_plugin_loader(package)
    elif not any(isinstance(f, _PatchAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchAfterImport(name, _use_plugin_loader))


class _HyperTuningNumpy:
    """NumPy as ``recbole.trainer.hyper_tuning`` sees it: RecBole 1.2.1 hands
    hyperopt a ``RandomState``, hyperopt >= 0.2.7 draws with a ``Generator``
    (``rng.integers``); ``np.str`` (gone since NumPy 1.24) is ``str``."""

    random = types.SimpleNamespace(RandomState=np.random.default_rng)
    str = str

    def __getattr__(self, name):
        return getattr(np, name)


def _space_from_file(path):
    """RecBole's params file, read as data (RecBole ``eval``s each choice list)."""
    from recbole.trainer.hyper_tuning import HyperTuning

    from recbole_llm.hyper import read_params_file
    return HyperTuning._build_space_from_dict(read_params_file(path))


def _patch_hyper_tuning():
    import recbole.trainer.hyper_tuning as hyper_tuning

    if not isinstance(hyper_tuning.np, _HyperTuningNumpy):
        hyper_tuning.np = _HyperTuningNumpy()
        hyper_tuning.HyperTuning._build_space_from_file = staticmethod(_space_from_file)


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
    _patch_pkg_resources()
    _patch_recbole_config()
    _patch_recbole_trainers()
    _patch_recbole_trainer_checkpoints()
    _patch_recbole_loader()
    _patch_hyper_tuning()


apply()
