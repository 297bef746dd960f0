"""Write an item embedding file in RecBole's convention for pretrained feature
embeddings, from a text encoder, so that item vectors can travel without the
encoder (a GPU machine without its weights) or come from any other encoder or
embedding API written in the same format.

    python -m recbole_llm.item_embeddings --dataset=ml-100k [--data_path=...] \\
        [--text_encoder_path=...] [--out=path/ml-100k.itememb]

The file has one row per item, ``iid:token`` (the item's token) and
``item_emb:float_seq``; the command prints the settings that make RecBole
preload it (``preload_weight``) and the LLM models use it
(``item_embedding_field: iid``) instead of running the encoder.
"""
import os
import sys

import numpy as np

ID_FIELD, VECTOR_FIELD, SUFFIX = "iid", "item_emb", "itememb"


def write_item_embeddings(config, out: str = None) -> tuple:
    """Encode the dataset's item texts; ``(file written, settings to add)``."""
    from recbole_llm.data import TextDataset
    from recbole_llm.llm.encoder import item_text_embeddings

    dataset = TextDataset(config)
    emb = item_text_embeddings(dataset, dict(config.final_config_dict, item_embedding_field=None),
                               device=config["device"])
    out = out or os.path.join(config["data_path"], f"{config['dataset']}.{SUFFIX}")
    tmp = f"{out}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"{ID_FIELD}:token\t{VECTOR_FIELD}:float_seq\n")
        for item in range(1, dataset.item_num):
            vector = " ".join(f"{v:.7g}" for v in emb[item])
            f.write(f"{dataset.id2token(dataset.iid_field, item)}\t{vector}\n")
    os.replace(tmp, out)
    load_col = dict(config["load_col"] or {})
    load_col[SUFFIX] = [ID_FIELD, VECTOR_FIELD]
    settings = {"additional_feat_suffix": [SUFFIX], "load_col": load_col,
                "alias_of_item_id": [ID_FIELD], "preload_weight": {ID_FIELD: VECTOR_FIELD},
                "item_embedding_field": ID_FIELD}
    return out, settings


def main(argv=None) -> int:
    from recbole_llm.config import Config
    from recbole_llm.errors import InputError
    from recbole_llm.options import parse_argv

    try:
        raw = parse_argv(list(sys.argv[1:] if argv is None else argv))
        out = raw.pop("out", None)
        dataset = raw.pop("dataset", "ml-100k")
        config = Config(model="BPR", dataset=dataset, argv=[f"--{k}={v}" for k, v in raw.items()])
        path, settings = write_item_embeddings(config, out)
    except (InputError, ValueError, FileNotFoundError, ImportError) as err:
        print(f"recbole-llm: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}; add to your settings (the file beside the dataset's atomic files):")
    for key, value in settings.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
