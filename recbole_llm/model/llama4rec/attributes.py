"""Llama4Rec's data augmentation for rating prediction: attribute filling.

A rating regressor (DeepFM, ...) reads user and item features; where a
single-valued (token) item feature is missing, the instruction-tuned LLM picks
its value among those the field takes elsewhere, by the mean log-probability
of each value's text after ``"<name>. Its <field> is"``, and the regressor
retrains on the completed features (the paper's D').  Multi-valued (token
sequence) fields are left as they are.
"""
import numpy as np
import torch
from recbole.utils import FeatureType

from recbole_llm.llm.prompts import answer_logprob


def missing_attributes(dataset, table: str) -> dict:
    """``{field: ids of rows with no value}`` of the user or item table's token fields."""
    feat = dataset.user_feat if table == "user" else dataset.item_feat
    id_field = dataset.uid_field if table == "user" else dataset.iid_field
    if feat is None:
        return {}
    out = {}
    for field in feat.interaction:
        if field == id_field or dataset.field2type.get(field) != FeatureType.TOKEN:
            continue
        rows = np.flatnonzero(feat[field].numpy()[1:] == 0) + 1  # 0: padding / missing
        if len(rows):
            out[field] = rows
    return out


@torch.no_grad()
def fill_attributes(model, dataset, batch_size: int = 64) -> list:
    """Fill every missing token attribute of items in place (shared by the split
    copies); returns ``(table, row, field, value)`` per fill.  One forward pass
    per (missing value, candidate value): fields with thousands of values
    (brands) cost as much."""
    s, tok = model.settings, model.tokenizer
    fills = []
    for table in ("item",):  # the paper fills item attributes
        feat = dataset.user_feat if table == "user" else dataset.item_feat
        for field, rows in missing_attributes(dataset, table).items():
            values = np.unique(feat[field].numpy())
            values = values[values > 0]
            if not len(values):
                continue
            texts = [str(dataset.id2token(field, int(v))) for v in values]
            answers = tok(texts, add_special_tokens=False)["input_ids"]
            label = field.replace("_", " ")
            for row in rows.tolist():
                if table == "item":
                    subject = model.writer.names[row]
                else:
                    subject = f"user {dataset.id2token(dataset.uid_field, row)}"
                prompt = tok(f"{subject}. Its {label} is", add_special_tokens=False)["input_ids"]
                scores = []
                for start in range(0, len(answers), batch_size):
                    chunk = answers[start:start + batch_size]
                    logp = answer_logprob(model.llm, [prompt] * len(chunk), chunk,
                                          model.pad_id, s.llm_max_prompt_tokens)
                    scores.append(logp.cpu() / torch.as_tensor([len(a) for a in chunk]))
                best = int(values[int(torch.cat(scores).argmax())])
                feat[field][row] = best
                fills.append((table, row, field, str(dataset.id2token(field, best))))
    return fills
