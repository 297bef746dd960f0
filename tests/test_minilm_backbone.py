"""``llm_path: minilm``: the pretrained all-MiniLM-L6-v2 that installs from PyPI
with the text encoder, run as a causal decoder (BERT's LM head with
``is_decoder=True``, output tied to its pretrained word embeddings)."""
import dataclasses

import pytest
import torch

from conftest import ML_TINY
from recbole_llm.config import Config
from recbole_llm.errors import InputError
from recbole_llm.llm.backbone import MINILM, apply_tuning, load_backbone
from recbole_llm.llm.encoder import default_encoder_path
from recbole_llm.llm.prompts import answer_lm_loss, training_batch
from recbole_llm.model.abstract import LLMSettings


@pytest.fixture(scope="module")
def settings():
    config = Config(model="EAGERLLM", dataset="beauty-tiny", argv=[],
                    config_dict=dict(ML_TINY, llm_path=MINILM, llm_max_prompt_tokens=128))
    return LLMSettings.from_config(config)


@pytest.fixture(scope="module")
def minilm(settings):
    model, tok = load_backbone(settings)
    return model.eval(), tok


def test_minilm_names_the_installed_encoder_folder(settings):
    assert settings.llm_path == default_encoder_path()


def test_minilm_is_a_causal_decoder_with_its_pretrained_tied_head(minilm):
    model, tok = minilm
    assert model.config.is_decoder
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert tok.eos_token == tok.sep_token and tok.pad_token is not None
    # causal: a position's output does not depend on what follows it
    ids = torch.tensor([tok("the user bought a red lipstick and", add_special_tokens=False)["input_ids"]])
    other = ids.clone()
    other[0, -1] = tok.convert_tokens_to_ids("blue")
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, model(input_ids=other).logits
    assert torch.allclose(a[0, :-1], b[0, :-1], atol=1e-5)
    assert not torch.allclose(a[0, -1], b[0, -1])


def test_minilm_head_starts_from_the_pretrained_embeddings(minilm):
    """The new head transform starts as the identity before the tied word
    embeddings, so the untuned decoder's hidden state at each position maps
    back onto that position's own pretrained token (a sentence encoder's state
    describes its token, not the next one: fine-tuning teaches the shift); a
    random transform would scatter them over 30k tokens."""
    model, tok = minilm
    ids = torch.tensor([tok("the cat sat on the mat and the dog sat on the rug",
                            add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        top = model(input_ids=ids).logits[0].argmax(-1)
    assert (top == ids[0]).float().mean() >= 0.8


def test_packed_minilm_batch_equals_each_sequence_alone(minilm):
    model, tok = minilm
    texts = ("the user bought a lipstick and then a cream", "which item", "a", "b c d")
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    answers = [[2000, 2001, 2002], [2003], [2004, 2005], [2006]]
    batch = training_batch(prompts, answers, tok.pad_token_id, 64)
    assert batch.input_ids.shape[0] < len(prompts)
    with torch.no_grad():
        loss, _ = answer_lm_loss(model, batch)
        nll, count = 0.0, 0
        for p, a in zip(prompts, answers):
            out = model(input_ids=torch.tensor([p + a]), labels=torch.tensor([[-100] * len(p) + a]))
            nll, count = nll + out.loss * len(a), count + len(a)
    assert torch.allclose(loss, nll / count, atol=1e-4)


def test_lora_on_minilm_trains_the_new_head_transform(settings):
    model, _ = load_backbone(settings)
    tuned = apply_tuning(model, dataclasses.replace(settings, llm_tuning="lora"))
    trainable = [n for n, p in tuned.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n in trainable)
    assert any("transform" in n for n in trainable)
    assert not any("word_embeddings" in n for n in trainable)


def test_prompt_limit_beyond_the_backbones_positions_is_an_error():
    """Checked before any data loads (Llama4Rec's default 640 does not fit MiniLM)."""
    from recbole_llm.quick_start import check_paths

    config = Config(model="EAGERLLM", dataset="beauty-tiny", argv=[],
                    config_dict=dict(ML_TINY, llm_path=MINILM, llm_max_prompt_tokens=640))
    with pytest.raises(InputError, match="llm_max_prompt_tokens 640 exceeds the 512 positions"):
        check_paths(config)
