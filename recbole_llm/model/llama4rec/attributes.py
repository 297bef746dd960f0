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


def missing_attributes(dataset) -> dict:
    """``{field: ids of items with no value}`` of the item table's token fields."""
    feat = dataset.item_feat
    if feat is None:
        return {}
    out = {}
    for field in feat.interaction:
        if field == dataset.iid_field or dataset.field2type.get(field) != FeatureType.TOKEN:
            continue
        rows = np.flatnonzero(feat[field].numpy()[1:] == 0) + 1  # 0: padding / missing
        if len(rows):
            out[field] = rows
    return out


@torch.no_grad()
def fill_attributes(model, dataset, batch_size: int = 64) -> list:
    """Fill every missing token attribute of items in place (shared by the split
    copies; the paper fills item attributes); returns ``("item", row, field,
    value)`` per fill.  One forward pass per (missing value, candidate value):
    fields with thousands of values (brands) cost as much."""
    s, tok, feat = model.settings, model.tokenizer, dataset.item_feat
    fills = []
    for field, rows in missing_attributes(dataset).items():
        values = np.unique(feat[field].numpy())
        values = values[values > 0]
        if not len(values):
            continue
        answers = tok([str(dataset.id2token(field, int(v))) for v in values],
                      add_special_tokens=False)["input_ids"]
        lengths = torch.as_tensor([len(a) for a in answers], dtype=torch.float32)
        label = field.replace("_", " ")
        for row in rows.tolist():
            prompt = tok(f"{model.writer.names[row]}. Its {label} is",
                         add_special_tokens=False)["input_ids"]
            scores = torch.cat([answer_logprob(model.llm, [prompt] * len(chunk), chunk,
                                               model.pad_id, s.llm_max_prompt_tokens).cpu()
                                for chunk in (answers[i:i + batch_size]
                                              for i in range(0, len(answers), batch_size))])
            best = int(values[int((scores / lengths).argmax())])
            feat[field][row] = best
            fills.append(("item", row, field, str(dataset.id2token(field, best))))
    return fills
