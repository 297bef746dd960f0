"""SCRec: Semantic Convergence (arXiv 2412.13771) as a RecBole sequential model.

Paper: "Semantic Convergence: Harmonizing Recommender Systems via Two-Stage
Alignment and Behavioral Semantic Tokenization",
https://arxiv.org/abs/2412.13771 (no public code).

What makes it SCRec, and where it lives here:

* Stage one, Alignment Tokenization (``tokenizer.py``): collaborative item
  embeddings (``behavior_model`` trained on the training split, or
  ``behavior_checkpoint``) compressed by ``codebook_levels`` cascaded
  residual codebooks (reconstruction + commitment losses) plus an alignment
  loss pulling each item's quantised vector, projected, toward the LLM's
  representation of its text.  Codes become new backbone tokens
  (``<c1_*>...<c4_*>``), collisions resolved, dead codes reset while training.
  The reconstruction error, code usage and collision rate are logged and
  kept in ``tokenizer_report``.
* Stage two: the backbone fine-tuned on four tasks mixed by
  ``aux_task_ratio`` and weighted per task (``task_loss_weights``):
  sequential (history codes -> next item codes), text alignment (codes ->
  text and text -> codes), query alignment (a query of the item's category
  values and title words -> codes) and negative sampling (history +
  candidate -> yes / no, negatives from RecBole's sampler).
* Inference: constrained beam search over valid codes into RecBole's
  full-sort scores; serving from a pre-computed top-K per user
  (``recbole_llm.serving``).
"""
import numpy as np
import torch
from recbole.utils import InputType

from recbole_llm.errors import InputError
from recbole_llm.fingerprint import array_fingerprint
from recbole_llm.llm.backbone import add_tokens, answer_token_ids, decoder_and_head
from recbole_llm.model.conventional import checkpoint_item_embeddings, train_item_embeddings
from recbole_llm.model.generative import GenerativeRecommender
from recbole_llm.model.screc.settings import SCRecSettings
from recbole_llm.model.screc.tokenizer import train_alignment_tokenizer
from recbole_llm.tokenization import ItemIndex
from recbole_llm.utils import forked_rng


class SCRec(GenerativeRecommender):
    """RecBole sequential model; see the module docstring."""

    # pairwise: RecBole's sampler puts a negative item beside each training row
    # (the negative-sampling task's "no" candidates)
    input_type = InputType.PAIRWISE
    settings_class = SCRecSettings
    TASK_SLOTS = {"seqrec": "history", "item2text": "item", "text2item": "text",
                  "query": "query", "negative": ("history", "item")}

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        s = self.read_settings(config)

        # --- the backbone, before any code token; checks before the long stages
        texts = dataset.item_texts()
        corpus = [t for t in texts if t] + [t for group in self.template_texts().values()
                                           for t in group] + [s.history_separator or ""]
        llm, _, _ = self.load_llm(corpus)
        llm.to(self.device)
        full = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        self.item_text_ids = [ids[:s.item_text_max_tokens] for ids in full]
        cut = sum(1 for ids in full[1:] if len(ids) > s.item_text_max_tokens)
        if cut:
            self.logger.info(f"item texts: the first {s.item_text_max_tokens} tokens "
                             f"(item_text_max_tokens) of {cut} of {len(full) - 1} longer texts")
        self.setup_prompts(s.history_separator)
        self._build_queries(dataset)
        self._check_lengths(s.codebook_levels + (s.code_collision == "extra_code"))

        # --- stage one: alignment tokenization (cached; the random state after it is
        # the same whether it was computed or read)
        with forked_rng(self.device):
            text_repr = self.text_representations(llm)
            if s.align_weight > 0 and (np.abs(text_repr[1:]).sum(1) > 0).sum() < 2:
                raise InputError("SCRec's alignment loss needs item texts: set item_text_fields "
                                 "(dataset yaml), or align_weight: 0")
            collab = checkpoint_item_embeddings(s.behavior_checkpoint, dataset.item_num) \
                if s.behavior_checkpoint else train_item_embeddings(
                    config, dataset, s.behavior_model, s.behavior_epochs, s.behavior_model_args,
                    self.cache)
            stage_one = self._tokenize(collab, text_repr)
        self.tokenizer_report = stage_one["report"]
        self.token_init = stage_one["token_init"]  # code vectors in the LLM's text space
        levels = s.codebook_levels
        prefixes = [f"c{level + 1}" for level in range(levels)]
        if s.code_collision == "extra_code":
            prefixes.append("x")
        self.index = ItemIndex.build(stage_one["codes"], collision=s.code_collision,
                                     k=s.codebook_size, prefixes=prefixes,
                                     preference=stage_one["preference"])
        self.register_buffer("item_codes", torch.as_tensor(self.index.codes))
        self.logger.info(f"SCRec codebooks: {_report_line(self.tokenizer_report)}")

        # --- codes as new tokens (seeded from the aligned projection), yes / no answers
        code_ids = add_tokens(llm, self.tokenizer, self.index.tokens())
        if s.align_target == "input_embeddings" and s.align_weight > 0:
            self._seed_code_embeddings(llm, stage_one["token_init"])
        (self.yes_id, self.no_id), answer_ids = answer_token_ids(
            llm, self.tokenizer, ["yes", "no"], special=True,
            spellings=lambda w: (" " + w, w, " " + w.capitalize(), w.capitalize()))
        self.trie = self.index.bind(self.tokenizer)
        self.tune_llm(llm, code_ids + answer_ids)

        # --- stage-two samples: templates again, with the new tokens in the vocabulary
        self.setup_prompts(s.history_separator)
        self._build_queries(dataset)

    @classmethod
    def check_settings(cls, final: dict) -> None:
        super().check_settings(final)
        sampling = final.get("train_neg_sample_args")
        samples = isinstance(sampling, dict) and sampling.get("distribution") not in (None, "none")
        if (final.get("aux_task_ratio") or {}).get("negative") and not samples:
            raise InputError("SCRec's negative task (aux_task_ratio.negative > 0) needs "
                             "RecBole's sampler: set train_neg_sample_args, e.g. "
                             "{distribution: uniform, sample_num: 1}")
        if (final.get("aux_task_ratio") or {}).get("query") and not final.get("preference_field") \
                and not final.get("prompt_item_field"):
            raise InputError("SCRec's query task needs preference_field (category-like .item "
                             "field) or prompt_item_field (title field): set one in the "
                             "dataset yaml, or aux_task_ratio.query: 0")


    # ------------------------------------------------------------ stage one
    @torch.no_grad()
    def text_representations(self, llm) -> np.ndarray:
        """``[n_items, hidden]``: each item's text as the LLM sees it, the
        alignment target: the mean of its tokens' input embeddings, or of the
        backbone's last hidden states over them (``align_target``).  Items
        without text get zeros and take no part in the alignment loss."""
        s = self.settings
        device = next(llm.parameters()).device
        out = np.zeros((self.n_items, llm.config.hidden_size), dtype=np.float32)
        if s.align_target == "input_embeddings":
            table = llm.get_input_embeddings().weight
            for item, ids in enumerate(self.item_text_ids):
                if item and ids:
                    out[item] = table[torch.as_tensor(ids, device=device)].float().mean(0).cpu().numpy()
            return out
        decoder, _ = decoder_and_head(llm)
        was_training = llm.training
        llm.eval()
        items = [i for i in range(1, self.n_items) if self.item_text_ids[i]]
        for start in range(0, len(items), s.beam_batch_size):
            chunk = items[start:start + s.beam_batch_size]
            width = max(len(self.item_text_ids[i]) for i in chunk)
            ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, item in enumerate(chunk):  # right padding: positions start at 0
                ids[row, :len(self.item_text_ids[item])] = torch.as_tensor(self.item_text_ids[item])
                mask[row, :len(self.item_text_ids[item])] = 1
            hidden = decoder(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            m = mask.to(device)[..., None].to(hidden.dtype)
            out[chunk] = ((hidden * m).sum(1) / m.sum(1)).float().cpu().numpy()
        llm.train(was_training)
        return out

    def _tokenize(self, collab: np.ndarray, text: np.ndarray) -> dict:
        """Stage one, cached under every setting and the contents of both inputs."""
        s = self.settings
        key = self.cache.key("screc-codes", settings=s.key_parts(exclude=("code_softmax",), memo_dir=self.cache.root),
                             collab=array_fingerprint(collab), text=array_fingerprint(text))
        if self.cache.has_arrays(key) and self.cache.has_json(key):
            arrays = self.cache.load_arrays(key)
            return dict(arrays, report=self.cache.load_json(key))
        result = train_alignment_tokenizer(collab[1:], text[1:], s, self.device,
                                           s.show_progress)
        self.cache.save_arrays(key, codes=result["codes"], token_init=result["token_init"],
                               preference=result["preference"])
        self.cache.save_json(key, result["report"])
        return result

    @torch.no_grad()
    def _seed_code_embeddings(self, llm, token_init: np.ndarray) -> None:
        """Each code token's input embedding starts at its code vector projected
        into the LLM's token space (the extra collision level keeps the default)."""
        table = llm.get_input_embeddings().weight
        init = torch.as_tensor(token_init, dtype=table.dtype, device=table.device)
        for level in range(self.settings.codebook_levels):
            for code in np.unique(self.index.codes[1:, level]):
                tid = self.tokenizer.convert_tokens_to_ids(self.index.token(level, code))
                table[tid] = init[level, int(code)]

    # ------------------------------------------------------------ stage two
    def _build_queries(self, dataset) -> None:
        """Per item, the token ids of its query parts: its distinctive category
        values (always in the query) and its title words (a few drawn per row)."""
        s = self.settings
        n = self.n_items
        cats = dataset.distinctive_field_values(s.preference_field, s.preference_exclude_share) \
            if s.preference_field else [[] for _ in range(n)]
        words = [" ".join(v).split() for v in dataset.item_field_values(s.prompt_item_field)] \
            if s.prompt_item_field else [[] for _ in range(n)]
        tok = self.tokenizer
        self.query_head = [tok(", ".join(c), add_special_tokens=False)["input_ids"] if c else []
                           for c in cats]
        self.query_words = [[tok(" " + w, add_special_tokens=False)["input_ids"] for w in ws]
                            for ws in words]

    def query_ids(self, item: int) -> list:
        """A query for ``item``: its category values and up to ``query_title_words``
        of its title words, drawn in title order."""
        words = self.query_words[item]
        take = min(self.settings.query_title_words, len(words))
        picked = np.sort(self.rng.choice(len(words), size=take, replace=False)) if take else []
        out = list(self.query_head[item])
        for w in picked:
            out += words[w]
        return out

    def _check_lengths(self, codes: int) -> None:
        """Every task's longest sequence fits ``llm_max_prompt_tokens`` (``codes``
        tokens per item)."""
        n = self.max_seq_length
        history = n * codes + (n - 1) * len(self.separator_ids)
        text = self.settings.item_text_max_tokens
        q = self.settings.query_title_words
        query = max(len(head) + sum(sorted(len(w) for w in words)[-q:] if q else [])
                    for head, words in zip(self.query_head[1:], self.query_words[1:]))
        slot = {"seqrec": history, "item2text": codes, "text2item": text, "query": query,
                "negative": history + codes}
        answer = {"seqrec": codes, "item2text": text + 1, "text2item": codes, "query": codes,
                  "negative": 1}
        self.check_task_lengths(slot, answer)

    def stage_two_samples(self, item_seq, item_len, targets, negatives=None):
        """``(prompts, answers, tasks)`` of a training batch: the sequential task on
        every row, the others on ``aux_task_ratio`` of the rows."""
        n = len(targets)
        items = targets.tolist()
        prompts = self.history_prompts(item_seq, item_len, training=True)
        answers = [self.index.token_ids(i) for i in items]
        tasks = ["seqrec"] * n
        for task in self.task_ratio:
            for r in self.aux_rows(n, task):
                item = items[r]
                if task == "item2text":
                    if not self.item_text_ids[item]:
                        continue
                    rows = [(self.template(task, True).fill(self.index.token_ids(item)),
                             self.item_text_ids[item] + [self.eos_id])]
                elif task == "text2item":
                    if not self.item_text_ids[item]:
                        continue
                    rows = [(self.template(task, True).fill(self.item_text_ids[item]),
                             self.index.token_ids(item))]
                elif task == "query":
                    query = self.query_ids(item)
                    if not query:
                        continue
                    rows = [(self.template(task, True).fill(query), self.index.token_ids(item))]
                elif task == "negative":
                    seen = item_seq[r, :int(item_len[r])].tolist()
                    negative = int(negatives[r])
                    # RecBole's sequential sampler only avoids the target: an item from
                    # the history would be a false "no"
                    if negative in seen or negative == item:
                        continue
                    history = self.history_ids(seen, len(seen))
                    # the true next item answers yes, RecBole's sampled item no
                    rows = [(self.template(task, True).fill(history, self.index.token_ids(item)),
                             [self.yes_id]),
                            (self.template(task, True).fill(history, self.index.token_ids(negative)),
                             [self.no_id])]
                else:
                    continue
                for prompt, answer in rows:
                    prompts.append(prompt)
                    answers.append(answer)
                    tasks.append(task)
        return prompts, answers, tasks

    def calculate_loss(self, interaction):
        negatives = interaction[self.NEG_ITEM_ID] if self.NEG_ITEM_ID in interaction else None
        prompts, answers, tasks = self.stage_two_samples(
            interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN],
            interaction[self.POS_ITEM_ID], negatives)
        batch, codes = self.packed_batch(prompts, answers)
        return self.task_loss(batch, tasks, codes)[0]


def _report_line(report: dict) -> str:
    return (f"reconstruction error {report['reconstruction_error']:.4f} (of the data's variance), "
            f"codes used per level {report['codes_used']}, perplexity {report['code_perplexity']}, "
            f"collision rate {report['collision_rate']:.4f}, dead codes reset "
            f"{report['dead_codes_reset']}")
