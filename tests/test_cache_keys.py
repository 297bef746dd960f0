"""Every cache key changes when anything that shapes its entry changes.

One test per cache: each input that shapes the cached result is changed in
turn (a setting, the data, item text, the content of a model folder or
checkpoint) and must give a new key; inputs that cannot shape it (logging,
settings acting in a later stage) keep the key, so caches are still reused.
"""
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import DATA, ML_TINY
from recbole_llm.config import Config
from recbole_llm.fingerprint import dataset_fingerprint, path_fingerprint
from recbole_llm.llm.cache import Cache
from recbole_llm.quick_start import create_dataset

TEXT = dict(ML_TINY, item_text_fields=["title", "release_year", "genre"])


@pytest.fixture
def cache(tmp_path):
    return Cache(str(tmp_path / "cache"))


def _copy_data(tmp_path):
    dst = tmp_path / "data"
    if not dst.exists():
        shutil.copytree(DATA, dst)
    return dst


def _edit_line(path, line_no, old, new):
    lines = open(path, encoding="utf-8").read().split("\n")
    assert old in lines[line_no]
    lines[line_no] = lines[line_no].replace(old, new, 1)
    open(path, "w", encoding="utf-8").write("\n".join(lines))


def _config(model="BPR", **extra):
    return Config(model=model, dataset="ml-tiny", config_dict=dict(TEXT, **extra))


def _text_dataset(config):
    from recbole_llm.data import TextDataset
    return TextDataset(config)


# --- content fingerprints ------------------------------------------------------------------
def test_path_fingerprint_is_content_not_path(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "config.json").write_text('{"x": 1}')
    (a / "model.safetensors").write_bytes(b"\x00" * 64)
    shutil.copytree(a, b)
    assert path_fingerprint(str(a)) == path_fingerprint(str(b))        # same bytes, other path
    (b / "model.safetensors").write_bytes(b"\x00" * 63 + b"\x01")
    assert path_fingerprint(str(a)) != path_fingerprint(str(b))        # one byte changed
    (tmp_path / "c.pth").write_bytes(b"weights")
    before = path_fingerprint(str(tmp_path / "c.pth"))
    (tmp_path / "c.pth").write_bytes(b"weightz")
    assert path_fingerprint(str(tmp_path / "c.pth")) != before


def test_dataset_fingerprint_sees_labels_features_and_text(tmp_path):
    data = _copy_data(tmp_path)
    base = dict(TEXT, data_path=str(data))
    ctr = dict(base, load_col={"inter": ["user_id", "item_id", "rating", "timestamp"]})

    def fp(**extra):
        return dataset_fingerprint(_text_dataset(Config(model="DeepFM", dataset="ml-tiny",
                                                        config_dict=dict(ctr, **extra))))

    four = fp(threshold={"rating": 4})
    assert four == fp(threshold={"rating": 4})
    assert four != fp(threshold={"rating": 3})                        # labels after thresholding
    _edit_line(data / "ml-tiny" / "ml-tiny.item", 1, "Toy Story", "Toy Storm")
    assert four != fp(threshold={"rating": 4})                        # item text
    _edit_line(data / "ml-tiny" / "ml-tiny.inter", 1, "881250949", "881250950")
    after_time = fp(threshold={"rating": 4})
    _edit_line(data / "ml-tiny" / "ml-tiny.inter", 1, "881250950", "881250951")
    assert after_time != fp(threshold={"rating": 4})                  # a timestamp


# --- one test per cache ----------------------------------------------------------------------
def test_text_embedding_key(cache, tmp_path):
    from recbole_llm.llm.encoder import default_encoder_path, text_embedding_key

    encoder = tmp_path / "enc"
    shutil.copytree(default_encoder_path(), encoder)
    texts = ["", "title: a", "title: b"]
    key = text_embedding_key(cache, texts, str(encoder))
    assert key == text_embedding_key(cache, list(texts), str(encoder))
    assert key != text_embedding_key(cache, ["", "title: a", "title: c"], str(encoder))
    assert key != text_embedding_key(cache, ["", "a", "b"], str(encoder))   # item_text_keyed
    moved = tmp_path / "other-name"
    shutil.copytree(encoder, moved)
    assert key == text_embedding_key(cache, texts, str(moved))         # a path is not content
    with open(moved / "config.json", "a") as f:
        f.write("\n")
    assert key != text_embedding_key(cache, texts, str(moved))         # same name, new content


def test_item_embedding_key_of_the_conventional_model(cache, tmp_path):
    from recbole_llm.model.conventional import conventional_config, item_embedding_key

    def key(model="SASRec", overrides=None, **extra):
        config = Config(model="EAGERLLM", dataset="ml-tiny", config_dict=dict(TEXT, **extra))
        dataset = create_dataset(config)
        sub = conventional_config(config, model, dict(overrides or {}, loss_type="CE"))
        return item_embedding_key(cache, sub, dataset, model)

    base = key()
    assert base == key(num_beams=30, show_progress=True)              # EAGER-only / run-only keys
    assert base != key(model="GRU4Rec")
    assert base != key(overrides={"hidden_size": 32})
    assert base != key(MAX_ITEM_LIST_LENGTH=10)
    assert base != key(seed=7)
    data = _copy_data(tmp_path)
    _edit_line(data / "ml-tiny" / "ml-tiny.inter", 1, "\t242\t", "\t302\t")
    assert base != key(data_path=str(data))                           # the interactions


def test_eager_index_key(cache):
    from recbole_llm.model.eagerllm.index import index_key

    rng = np.random.default_rng(0)
    sem, beh = rng.normal(size=(20, 8)), rng.normal(size=(20, 4))
    settings = dict(composition="unit", k=4, sem_levels=2, beh_levels=2, iters=10, seed=1,
                    collision="reassign")
    key = index_key(cache, sem, beh, settings)
    assert key == index_key(cache, sem.copy(), beh.copy(), dict(settings))
    sem2 = sem.copy()
    sem2[3, 1] += 1e-3                    # other item text, another encoder
    beh2 = beh.copy()
    beh2[5, 0] += 1e-3                    # another behaviour checkpoint or training run
    assert key != index_key(cache, sem2, beh, settings)
    assert key != index_key(cache, sem, beh2, settings)
    for name, value in [("composition", "behavior"), ("k", 8), ("sem_levels", 1), ("iters", 5),
                        ("seed", 2), ("collision", "extra_code")]:
        assert key != index_key(cache, sem, beh, dict(settings, **{name: value})), name


def test_eager_behaviour_checkpoint_content_reaches_the_index_key(cache, tmp_path):
    """Two checkpoints at one path: the index key follows the file's content."""
    import torch

    from recbole_llm.model.conventional import checkpoint_item_embeddings
    from recbole_llm.model.eagerllm.index import index_key

    path = tmp_path / "beh.pth"
    keys = []
    for value in (0.0, 1.0):
        torch.save({"state_dict": {"item_embedding.weight": torch.full((5, 3), value)}}, path)
        beh = checkpoint_item_embeddings(str(path), 5)
        keys.append(index_key(cache, np.zeros((5, 2)), beh, {"k": 2}))
    assert keys[0] != keys[1]


def test_elcorec_gat_key(cache, tmp_path):
    from recbole_llm.model.elcorec.expert import expert_key
    from recbole_llm.model.elcorec.settings import ELCoRecSettings, GATSettings
    from recbole_llm.quick_start import create_dataset

    ctr = dict(TEXT, load_col={"inter": ["user_id", "item_id", "rating", "timestamp"],
                               "item": ["item_id", "release_year", "genre"]})

    def key(**extra):
        config = Config(model="ELCoRec", dataset="ml-tiny",
                        config_dict={**ctr, "threshold": {"rating": 4}, **extra})
        settings = ELCoRecSettings.from_config(config)
        return expert_key(cache, GATSettings.of(settings), settings.seed, create_dataset(config))

    base = key()
    assert base == key(show_progress=True, rap_k_similar=3)           # not the expert's settings
    assert base != key(threshold={"rating": 3})                       # the reported stale key
    assert base != key(gat_dim=16)
    assert base != key(gat_time_buckets=4)
    assert base != key(gat_mode="user")
    assert base != key(gat_history_len=3)
    assert base != key(min_history=3)                                 # other rows
    assert base != key(seed=3)
    data = _copy_data(tmp_path)
    _edit_line(data / "ml-tiny" / "ml-tiny.inter", 1, "881250949", "881250000")
    assert base != key(data_path=str(data))                           # a time


def test_llama4rec_keys(cache, tmp_path):
    from recbole_llm.model.llama4rec.settings import Llama4RecSettings
    from recbole_llm.model.llama4rec.trainer import base_key, tuned_llm_key

    def keys(**extra):
        config = Config(model="Llama4Rec", dataset="ml-tiny",
                        config_dict={**TEXT, "prompt_item_field": "title", **extra})
        dataset = _text_dataset(config)
        base = base_key(cache, config, dataset)
        return base, tuned_llm_key(cache, Llama4RecSettings.from_config(config), dataset, base)

    base, llm = keys()
    assert (base, llm) == keys(show_progress=True, alpha1=0.7, fixed_alpha=0.1)  # serving only
    assert keys(embedding_size=32)[0] != base                         # the base model's setting
    assert keys(embedding_size=32)[1] != llm                          # ... reaches the LLM key
    assert keys(llm_hidden_size=64)[0] == base                        # LLM settings: not the base
    for name, value in [("llm_hidden_size", 64), ("llm_max_positions", 512),
                        ("item_text_fields", ["title", "genre"]), ("item_text_keyed", False),
                        ("it_samples_per_task", 10), ("llama4rec_base_text", " Suggested: {items}."),
                        ("prompt_item_field", None), ("lora_r", 4)]:
        assert keys(**{name: value})[1] != llm, name

    from transformers import LlamaConfig, LlamaForCausalLM

    from recbole_llm.llm.backbone import train_tokenizer
    tok = train_tokenizer(["a b c d e f"], 300)
    folder = tmp_path / "llm"
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=32))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    first = keys(llm_path=str(folder))[1]
    model.model.embed_tokens.weight.data += 1                         # same path, new weights
    model.save_pretrained(folder)
    assert keys(llm_path=str(folder))[1] != first


# A later run: a new process, which remembers nothing but what is on disk.
LATER_RUN = """
import builtins, sys
from recbole_llm.fingerprint import path_fingerprint
opened, real_open = [], builtins.open
builtins.open = lambda f, *a, **k: opened.append(str(f)) or real_open(f, *a, **k)
print(path_fingerprint(sys.argv[1], sys.argv[2]))
print(any(p.endswith("model.safetensors") for p in opened))
"""


def test_path_fingerprint_is_remembered_on_disk_until_a_file_changes(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\x01" * 32)
    (folder / ".cache").mkdir()
    (folder / ".cache" / "download.lock").write_text("x")
    memo = str(tmp_path / "memo")
    first = path_fingerprint(str(folder), memo)
    later = subprocess.run([sys.executable, "-c", LATER_RUN, str(folder), memo],
                           capture_output=True, text=True, check=True, timeout=120)
    again, read_again = later.stdout.split()[-2:]
    assert again == first
    assert read_again == "False"                                      # not read again
    (folder / ".cache" / "download.lock").write_text("changed")       # hidden folders: not content
    assert path_fingerprint(str(folder), memo) == first
    (folder / "model.safetensors").write_bytes(b"\x02" * 32)
    assert path_fingerprint(str(folder), memo) != first


def test_tokenizer_key(cache):
    from recbole_llm.llm.backbone import tokenizer_key

    key = tokenizer_key(cache, ["a b", "c"], 300)
    assert key == tokenizer_key(cache, ("a b", "c"), 300)
    assert key != tokenizer_key(cache, ["a b", "d"], 300)
    assert key != tokenizer_key(cache, ["a b", "c"], 400)


def test_settings_key_parts_see_how_the_llm_is_built(monkeypatch, tmp_path):
    """The loader's version (with ``llm_path``) or the small default's version and
    its initialising library (without) are in every settings key."""
    import transformers

    from recbole_llm.llm import backbone
    from recbole_llm.model.eimf.settings import EIMFSettings

    folder = tmp_path / "llm"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    default = EIMFSettings.from_config(_config("EIMF"))
    pretrained = EIMFSettings.from_config(_config("EIMF", llm_path=str(folder)))
    first, loaded = default.key_parts(), pretrained.key_parts()
    monkeypatch.setattr(backbone, "SMALL_DEFAULT_VERSION", "small-llama-next")
    assert default.key_parts() != first
    monkeypatch.undo()
    assert default.key_parts() == first
    monkeypatch.setattr(transformers, "__version__", "0.0.0")
    assert default.key_parts() != first
    assert pretrained.key_parts() == loaded                          # the default's: unused
    monkeypatch.setattr(backbone, "LOADER_VERSION", "encoder-as-decoder-next")
    assert pretrained.key_parts() != loaded


def test_llama4rec_augmented_base_key(cache):
    from recbole_llm.model.llama4rec.settings import Llama4RecSettings
    from recbole_llm.model.llama4rec.trainer import augmented_base_key

    def key(base="b", llm="l", rows="r", **extra):
        config = Config(model="Llama4Rec", dataset="ml-tiny", config_dict={**TEXT, **extra})
        return augmented_base_key(cache, config, Llama4RecSettings.from_config(config), base,
                                  llm, rows)

    first = key()
    assert first == key(alpha1=0.9)                                  # aggregation: after it
    assert first != key(base="b2") and first != key(llm="l2") and first != key(rows="r2")
    assert first != key(aug_warm_start=True)
    assert first != key(embedding_size=16)                           # the base model's setting


def test_llm_answer_key(tmp_path):
    from recbole_llm.llm.client import CachedClient, LLMClient

    class Named(LLMClient):
        def __init__(self, name):
            self.name = name

        @property
        def identity(self):
            return self.name

        def complete(self, prompts, max_new_tokens=64, temperature=0.0):
            return [f"{self.name}:{p}" for p in prompts]

    # A new key is a prompt sent to the client (``calls``); the same key is answered
    # from the store, by this client or a later one over the same folder.
    a = CachedClient(Named("a"), str(tmp_path), show_progress=False)
    assert a.complete(["p"], 8, 0.0) == ["a:p"] and a.calls == 1
    assert a.complete(["p"], 8, 0.0) == ["a:p"] and a.calls == 1
    for changed in ((["q"], 8, 0.0), (["p"], 9, 0.0), (["p"], 8, 0.5)):  # prompt, length, temperature
        calls = a.calls
        a.complete(*changed)
        assert a.calls == calls + 1, changed
    again = CachedClient(Named("a"), str(tmp_path), show_progress=False)
    assert again.complete(["p"], 8, 0.0) == ["a:p"] and again.calls == 0
    other = CachedClient(Named("b"), str(tmp_path), show_progress=False)  # another client identity
    assert other.complete(["p"], 8, 0.0) == ["b:p"] and other.calls == 1
