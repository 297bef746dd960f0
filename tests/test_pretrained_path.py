"""The path users take: every LLM model on a local pretrained model folder
(``--llm_path``), LoRA by default, through the command line's pipeline; the
checkpoint reloads into a freshly built model and the LoRA adapter loads with
peft.  Two architectures: Llama and GPT-2 (other module names, tied head)."""
import math
import os

import pytest
import torch

from conftest import save_tiny_pretrained
from test_eagerllm import TINY_EAGER
from test_elcorec import TINY_CTR
from test_llama4rec import TINY
from test_screc import TINY_SCREC

MODELS = {
    "EAGERLLM": ("beauty-tiny", TINY_EAGER, "ndcg@10"),
    "SCRec": ("beauty-tiny", TINY_SCREC, "ndcg@10"),
    "Llama4Rec": ("ml-tiny", dict(TINY, base_model="BPR"), "ndcg@5"),
    # short prompts: the pipeline, not the prompt length, is under test here
    "ELCoRec": ("ml-tiny", dict(TINY_CTR, rap_k_similar=2, rap_k_recent=2, item_text_max_tokens=6,
                                llm_max_prompt_tokens=256), "auc"),
}


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def pretrained(request, tmp_path_factory):
    return save_tiny_pretrained(tmp_path_factory.mktemp(request.param), request.param)


@pytest.mark.parametrize("model", list(MODELS))
def test_pretrained_model_trains_saves_reloads_and_exports_its_adapter(model, pretrained, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from recbole_llm.config import Config
    from recbole_llm.quick_start import build, run_recbole_llm
    from recbole_llm.trainer import adapter_dir, load_checkpoint

    dataset, settings, metric = MODELS[model]
    settings = dict(settings, llm_path=pretrained, llm_cache_dir=str(tmp_path / "cache"))
    result = run_recbole_llm(model=model, dataset=dataset, config_dict=settings, argv=[])
    value = result["test_result"][metric]
    assert math.isfinite(value) and 0 <= value <= 1

    # the checkpoint reloads into a freshly built model, weight for weight
    path = result["saved_model_file"]
    state = load_checkpoint(path)["state_dict"]
    _, _, fresh, trainer = build(Config(model=model, dataset=dataset, config_dict=settings, argv=[]))
    trainer.load_model_weights(path)
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(tensor.cpu(), state[name].cpu()), name

    # the adapter, in peft's own format, loads onto the base model with peft
    folder = adapter_dir(path)
    assert os.path.isfile(os.path.join(folder, "adapter_config.json"))
    assert os.path.isfile(os.path.join(folder, "adapter_model.safetensors"))
    base = AutoModelForCausalLM.from_pretrained(pretrained)
    base.resize_token_embeddings(len(fresh.tokenizer))
    loaded = PeftModel.from_pretrained(base, folder)
    lora = {k: v for k, v in fresh.llm.state_dict().items() if "lora_A" in k}
    assert lora and all(torch.equal(loaded.state_dict()[k].cpu(), v.cpu()) for k, v in lora.items())
