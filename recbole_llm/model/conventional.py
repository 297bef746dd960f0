"""Train one of RecBole's own models on the training split, for its embeddings.

EAGER-LLM's behavioural index and SCRec's collaborative codebooks start
from item embeddings of a conventional recommender.  That model must see the
training split only (the dataset a plugin model receives in ``__init__``), is
trained by RecBole's own ``Trainer``, and its item table is cached under a key
of the training data and every setting that shapes it.
"""

import numpy as np
import yaml
from recbole.data.dataloader import TrainDataLoader
from recbole.trainer import Trainer

from recbole_llm import registry
from recbole_llm.distributed import single_process_config
from recbole_llm.fingerprint import dataset_fingerprint, recbole_settings
from recbole_llm.llm.cache import Cache
from recbole_llm.paths import recbole_file, recbole_model_yaml


def _recbole_defaults(config, model_name: str) -> dict:
    """RecBole's yaml for the model, read with RecBole's loader (``1e-12`` is a float)."""
    files = recbole_model_yaml(model_name)
    if not files:
        return {}
    with open(files[0], encoding="utf-8") as f:
        return yaml.load(f, Loader=config.yaml_loader) or {}


# Training settings the conventional model takes from RecBole, not from the
# plugin model whose config it is derived from (e.g. EAGER's batch of 64).
_TRAINING_KEYS = ("train_batch_size", "learner", "learning_rate", "weight_decay",
                  "clip_grad_norm", "epochs", "stopping_step")


def _recbole_overall(config) -> dict:
    with open(recbole_file("overall.yaml"), encoding="utf-8") as f:
        overall = yaml.load(f, Loader=config.yaml_loader) or {}
    return {k: overall[k] for k in _TRAINING_KEYS if k in overall}


def conventional_config(config, model_name: str, overrides: dict = None):
    """A copy of ``config`` with RecBole's training defaults, RecBole's defaults
    for ``model_name``, then ``overrides``."""
    # an inner model trains in the process that builds it, on the whole training split
    # (under several processes rank 0 trains and caches it, the others read it)
    sub = single_process_config(config)
    sub.final_config_dict.update(_recbole_overall(config))
    sub.final_config_dict.update(_recbole_defaults(config, model_name))
    sub.final_config_dict.update(overrides or {})
    sub.final_config_dict["model"] = model_name
    sub.final_config_dict["single_spec"] = True
    return sub


# RecBole's form of ``train_neg_sample_args: ~`` once its Config has read it
NO_SAMPLING = {"distribution": "none", "sample_num": "none", "alpha": "none", "dynamic": False,
               "candidate_num": 0}


def checkpoint_item_embeddings(path: str, n_items: int) -> np.ndarray:
    """``item_embedding.weight`` of a RecBole / recbole-llm checkpoint, loaded weights-only."""
    from recbole_llm.trainer import load_checkpoint

    try:
        state = load_checkpoint(path)["state_dict"]
    except Exception as err:
        raise ValueError(f"cannot read {path} as a weights-only checkpoint ({err}); RecBole's own "
                         "checkpoints pickle their Config: train with run_recbole_llm.py") from None
    if "item_embedding.weight" not in state:
        raise ValueError(f"{path} holds no item_embedding.weight (keys: {list(state)[:8]}...)")
    emb = state["item_embedding.weight"].float().numpy()
    if emb.shape[0] != n_items:
        raise ValueError(f"{path}: item table has {emb.shape[0]} rows, the dataset {n_items} items; "
                         "was it trained on this dataset with the same filtering?")
    return emb


def item_embedding_key(cache: Cache, sub_config, dataset, model_name: str) -> str:
    """Every setting RecBole's model and trainer can read, and the training data."""
    return cache.key("item-emb", model=model_name, settings=recbole_settings(sub_config, model_name),
                     data=dataset_fingerprint(dataset))


def train_item_embeddings(config, dataset, model_name: str, epochs: int, overrides: dict = None,
                          cache: Cache = None) -> np.ndarray:
    """Item embedding table ``[n_items, d]`` of a RecBole sequential model trained
    with the CE loss on ``dataset`` (the training split)."""
    model_class = registry.get_model_class(model_name)
    overrides = dict(overrides or {})
    overrides.setdefault("loss_type", "CE")
    overrides["epochs"] = epochs
    if overrides["loss_type"] != "CE":
        raise ValueError(f"{model_name} as an embedding source must use loss_type CE "
                         "(no negative sampler is built for it)")
    cache = cache or Cache.from_config(config)
    # the CE loss ranks every item: no sampler (the plugin model's own, e.g. SCRec's,
    # is not the embedding model's)
    overrides["train_neg_sample_args"] = NO_SAMPLING
    sub = conventional_config(config, model_name, overrides)
    key = item_embedding_key(cache, sub, dataset, model_name)

    def compute():
        model = model_class(sub, dataset).to(sub["device"])
        if not hasattr(model, "item_embedding"):
            raise ValueError(f"{model_name} has no item_embedding table to take embeddings from")
        loader = TrainDataLoader(sub, dataset, None, shuffle=True)
        trainer = Trainer(sub, model)
        trainer.fit(loader, None, saved=False, show_progress=config["show_progress"])
        return {"emb": model.item_embedding.weight.detach().cpu().numpy()}

    return cache.get_or_compute_arrays(key, compute)["emb"]
