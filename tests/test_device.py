"""Tensors follow ``config["device"]``: no code of the plugin names a device.

A user on a GPU sets ``use_gpu`` (RecBole's ``config["device"]``); a tensor
made on a device written into the code lands on the CPU (slow, or a device
mismatch) or on a GPU the user did not pick.  Two checks on the CPU: while
each LLM model runs its tiny pipeline, every torch call made from the
plugin's own code is watched for a device given as a literal (a string or a
number) and for ``.cuda()``; and no source file spells a device name.
"""
import ast
import math
import os
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode

import recbole_llm
from test_eagerllm import TINY_EAGER
from test_elcorec import TINY_CTR
from test_llama4rec import TINY
from test_screc import TINY_SCREC
from test_eimf import TINY_EIMF

PACKAGE = os.path.dirname(os.path.abspath(recbole_llm.__file__))

MODELS = {
    "EAGERLLM": ("beauty-tiny", TINY_EAGER, "ndcg@10"),
    "SCRec": ("beauty-tiny", TINY_SCREC, "ndcg@10"),
    "EIMF": ("beauty-tiny", TINY_EIMF, "ndcg@10"),
    "Llama4Rec": ("ml-tiny", dict(TINY, base_model="BPR"), "ndcg@5"),
    "ELCoRec": ("ml-tiny", dict(TINY_CTR, rap_k_similar=2, rap_k_recent=2, item_text_max_tokens=6,
                                llm_max_prompt_tokens=256), "auc"),
}


def plugin_caller():
    """``file:line`` of the plugin code that called this torch function
    directly, or None: calls that libraries (torch's optimisers, RecBole,
    transformers) make inside are theirs to place."""
    frame = sys._getframe(2)
    path = os.path.abspath(frame.f_code.co_filename)
    return f"{os.path.relpath(path, PACKAGE)}:{frame.f_lineno}" if path.startswith(PACKAGE) else None


class LiteralDevices(TorchFunctionMode):
    """Records torch calls from plugin code that name a device themselves."""

    def __init__(self):
        super().__init__()
        self.found = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        device = kwargs.get("device")
        literal = isinstance(device, (str, int)) and not isinstance(device, bool)
        name = getattr(func, "__name__", "")
        if name == "cuda" or (name == "to" and any(isinstance(a, str) for a in args[1:])):
            literal = True
        if literal:
            where = plugin_caller()
            if where:
                self.found.add(f"{where} {name}(device={device!r})")
        return func(*args, **kwargs)


@pytest.mark.parametrize("model", list(MODELS))
def test_no_tensor_is_made_on_a_device_named_in_the_code(model, tmp_path):
    from recbole_llm.quick_start import run_recbole_llm

    dataset, settings, metric = MODELS[model]
    settings = dict(settings, llm_cache_dir=str(tmp_path / "cache"))
    watch = LiteralDevices()
    with watch:
        result = run_recbole_llm(model=model, dataset=dataset, config_dict=settings, argv=[])
    assert math.isfinite(result["test_result"][metric])
    assert not watch.found, sorted(watch.found)


def test_the_watch_catches_a_literal_device():
    """The check can fail: a plugin-style call with ``device="cpu"`` is caught."""
    watch = LiteralDevices()
    code = compile("import torch\nx = torch.zeros(2, device='cpu')\n",
                   os.path.join(PACKAGE, "probe.py"), "exec")
    with watch:
        exec(code, {})
        torch.zeros(2, device=torch.device("cpu"))  # from the test itself: not the plugin's
    assert watch.found == {"probe.py:2 zeros(device='cpu')"}


def package_sources():
    """``(path, syntax tree)`` of every module of the package."""
    for root, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                with open(path) as f:
                    yield path, ast.parse(f.read())


def test_no_source_file_names_a_device():
    """No call in the package is given an accelerator's name (``"cuda"``,
    ``"cuda:0"``, ``"mps"``) as an argument: ``torch.device("cuda")``,
    ``.to("cuda")``, ``device="cuda"``.  (Names used otherwise, such as the
    key of the GPU random state in a checkpoint, place nothing.)"""
    names = {"cuda", "mps"}
    found = []
    for path, tree in package_sources():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            for value in list(node.args) + [k.value for k in node.keywords]:
                if isinstance(value, ast.Constant) and isinstance(value.value, str) \
                        and value.value.split(":")[0] in names:
                    found.append(f"{os.path.relpath(path, PACKAGE)}:{value.lineno} {value.value!r}")
    assert not found, found


def test_no_function_defaults_to_a_named_device():
    """A ``device="cpu"`` default is how code silently stays on the CPU when a
    caller forgets to pass the model's device (the text encoder did)."""
    found = []
    for path, tree in package_sources():
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            args = node.args.args[len(node.args.args) - len(node.args.defaults):] + node.args.kwonlyargs
            defaults = list(node.args.defaults) + list(node.args.kw_defaults)
            for arg, default in zip(args, defaults):
                if "device" in arg.arg and isinstance(default, ast.Constant) and isinstance(default.value, str):
                    found.append(f"{os.path.relpath(path, PACKAGE)}:{node.lineno} {node.name}({arg.arg}={default.value!r})")
    assert not found, found
