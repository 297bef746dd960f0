"""EAGER-LLM (arXiv 2502.14735) as a RecBole sequential model.

Paper: "EAGER-LLM: Enhancing Large Language Models as Recommenders through
Exogenous Behavior-Semantic Integration", https://arxiv.org/abs/2502.14735.

What makes it EAGER-LLM, and where it lives here:

* Dual-source item indices: a semantic index (hierarchical k-means of item
  text embeddings) and a behavioural index (hierarchical k-means of the item
  table of a conventional model trained on the training split), kept as
  separate code levels (``<s1_*><s2_*><b1_*><b2_*>``), collisions resolved.
  ``index_composition`` (unit / semantic / behavior / random) runs the
  paper's ablation.
* The codes are new tokens of the causal LM; training is multi-task:
  next-item generation, item text -> index, index -> item text and
  preference understanding, all built from the dataset.
* Global Contrast Decompression: a ``[CON]`` token after the target's codes;
  its last hidden state goes through two trainable projectors and an InfoNCE
  loss against the target's original semantic and behavioural embeddings
  (weights ``gct_lambda_sem``, ``gct_lambda_beh``; training only).
* Annealing Adapter Tuning: a second phase (``trainer.EAGERTrainer``) freezes the
  stage-one model, adds a LoRA adapter and trains it on filtered samples of
  the recommendation task only; kept at inference unless
  ``aat_keep_adapter: False``.
* Inference: constrained beam search (beam 20) over valid item codes only,
  turned into RecBole's full-sort scores.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from recbole_llm.errors import InputError
from recbole_llm.llm.encoder import item_text_embeddings
from recbole_llm.llm.generation import constrained_beam_search, to_full_sort_scores
from recbole_llm.llm.prompts import (Template, answer_logits, answer_logprob, inference_batch,
                                     training_batch)
from recbole_llm.model.abstract import LLMRecommender
from recbole_llm.model.conventional import checkpoint_item_embeddings, train_item_embeddings
from recbole_llm.model.eagerllm.index import build_dual_source_codes, index_key
from recbole_llm.model.eagerllm.settings import EAGERSettings
from recbole_llm.model.layers import info_nce, projector
from recbole_llm.tokenization import ItemIndex

CON_TOKEN = "[CON]"
# each task's template slot
TASK_SLOTS = {"seqrec": "history", "item2index": "text", "index2item": "item",
              "preference": "history"}


class EAGERLLM(LLMRecommender, SequentialRecommender):
    """RecBole sequential model; see the module docstring."""

    input_type = InputType.POINTWISE
    settings_class = EAGERSettings

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        s = self.read_settings(config)
        cache = self.cache
        self.max_prompt = s.llm_max_prompt_tokens
        self.num_beams = s.num_beams
        self.beam_batch_size = s.beam_batch_size

        # --- exogenous knowledge: semantic (text) and behavioural embeddings
        sem = item_text_embeddings(dataset, s, cache, self.device)
        if s.behavior_checkpoint:
            beh = checkpoint_item_embeddings(s.behavior_checkpoint, dataset.item_num)
        else:  # RecBole's own model and trainer, which read the RecBole config
            beh = train_item_embeddings(config, dataset, s.behavior_model, s.behavior_epochs,
                                        s.behavior_model_args, cache)
        self.register_buffer("sem_emb", torch.as_tensor(sem, dtype=torch.float32))
        self.register_buffer("beh_emb", torch.as_tensor(beh, dtype=torch.float32))

        # --- dual-source item index
        self.index = self._build_index(sem, beh, cache, dataset)
        self.register_buffer("item_codes", torch.as_tensor(self.index.codes))

        # --- backbone with code tokens and [CON]
        texts = dataset.item_texts()
        templates = {task: [text] if isinstance(text, str) else list(text) for task, text in (
            ("seqrec", s.seqrec_template), ("item2index", s.item2index_template),
            ("index2item", s.index2item_template), ("preference", s.preference_template))}
        corpus = [t for t in texts if t] + [t for group in templates.values() for t in group] \
            + [s.history_separator or ""]
        llm, code_ids, (self.con_id,) = self.load_llm(corpus, self.index.tokens(), [CON_TOKEN])
        self.trie = self.index.bind(self.tokenizer)
        self._new_token_ids = code_ids + [self.con_id]
        self.tune_llm(llm, self._new_token_ids)

        # --- templates (the first of each task is the one used at inference), the
        # separator between history items, per-item token ids: tokenised once
        self.templates = {task: [Template(self.tokenizer, text, TASK_SLOTS[task]) for text in group]
                          for task, group in templates.items()}
        self.separator_ids = self.tokenizer(s.history_separator,
                                            add_special_tokens=False)["input_ids"] \
            if s.history_separator else []  # "" or None: items' codes back to back
        self.item_text_ids = [ids[:s.item_text_max_tokens] for ids in
                              self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        self.preferences = self._preference_answers(dataset, s.preference_field)

        # --- Global Contrast Decompression projectors (training only)
        hidden = llm.config.hidden_size
        self.sem_proj = projector(s.gct_projector, hidden, self.sem_emb.shape[1])
        self.beh_proj = projector(s.gct_projector, hidden, self.beh_emb.shape[1])
        self.gct_lambda_sem = s.gct_lambda_sem
        self.gct_lambda_beh = s.gct_lambda_beh
        self.gct_tau = s.gct_temperature
        self.task_ratio = dict(s.aux_task_ratio or {})
        self.loss_weights = dict(s.task_loss_weights or {})
        if self.task_ratio.get("preference") and self.preferences is None:
            self.logger.warning("the preference task is off: no preference_field names the .item "
                                "field it summarises (set preference_field, or "
                                "aux_task_ratio.preference: 0)")
        self.annealing = False
        # saved with the weights: a checkpoint says which structure it needs
        self.register_buffer("annealed", torch.tensor(False))
        self.rng = np.random.default_rng(s.seed)
        self._check_lengths()

    @classmethod
    def check_settings(cls, final: dict) -> None:
        """Before any data loads: tasks, their loss weights and templates; and
        with full ranking, metric cut-offs within ``num_beams`` (beam search
        ranks that many items; beyond it, ties in id order)."""
        mode = (final.get("eval_args") or {}).get("mode", "full")
        modes = set(mode.values()) if isinstance(mode, dict) else {mode}
        topk = final.get("topk") or []
        topk = [topk] if isinstance(topk, int) else topk
        if "full" in modes and topk and max(topk) > final["num_beams"]:
            raise InputError(f"topk {list(topk)} goes past num_beams={final['num_beams']}: beam "
                             f"search ranks only num_beams items; set num_beams >= {max(topk)}")
        ratios = final.get("aux_task_ratio") or {}
        weights = final.get("task_loss_weights") or {}
        unknown = (set(ratios) | set(weights)) - set(TASK_SLOTS)
        if unknown:
            raise InputError(f"unknown task(s) {sorted(unknown)} in aux_task_ratio / "
                             f"task_loss_weights (tasks: {', '.join(TASK_SLOTS)})")
        for task in ["seqrec", *(t for t, r in ratios.items() if r)]:
            if task not in weights:
                raise InputError(f"task_loss_weights has no weight for task '{task}'")
        for task, slot in TASK_SLOTS.items():
            texts = final.get(f"{task}_template")
            for text in [texts] if isinstance(texts, str) else texts or []:
                if not isinstance(text, str) or text.count("{" + slot + "}") != 1:
                    raise InputError(f"{task}_template {text!r} must hold {{{slot}}} exactly once")

    # ------------------------------------------------------------------ index
    def _build_index(self, sem, beh, cache, dataset) -> ItemIndex:
        s = self.settings
        settings = dict(composition=s.index_composition, k=s.index_k,
                        sem_levels=s.index_semantic_levels, beh_levels=s.index_behavior_levels,
                        iters=s.index_kmeans_iters, seed=s.seed, collision=s.index_collision)
        key = index_key(cache, sem, beh, settings)
        if cache.has_arrays(key):
            return ItemIndex.load(cache, key)
        codes, prefixes = build_dual_source_codes(
            sem[1:], beh[1:], settings["composition"], settings["k"], settings["sem_levels"],
            settings["beh_levels"], settings["iters"], settings["seed"])
        collision = settings["collision"]
        if collision == "extra_code":
            prefixes = prefixes + ["x"]
        index = ItemIndex.build(codes, collision=collision, k=settings["k"], prefixes=prefixes)
        index.save(cache, key)
        return index

    def _check_lengths(self) -> None:
        """Every task's longest sequence fits ``llm_max_prompt_tokens`` (checked
        before training: prompts are never cut)."""
        codes = max(len(self.index.token_ids(i)) for i in range(1, self.n_items))
        history = self.max_seq_length * codes + (self.max_seq_length - 1) * len(self.separator_ids)
        text = self.settings.item_text_max_tokens
        if self.preferences is not None:
            values = {v for vs in self.preferences for v in vs}
            lengths = sorted(len(ids) for ids in self.tokenizer(sorted(values), add_special_tokens=False)[
                "input_ids"]) if values else [0]
            preference = sum(lengths[-2:]) + 3  # the two longest, ", ", end of text
        else:
            preference = 0
        slot = {"seqrec": history, "item2index": text, "index2item": codes,
                "preference": history}
        answer = {"seqrec": codes + 1, "item2index": codes, "index2item": text + 1,
                  "preference": preference}  # seqrec: [CON] after the codes
        for task, group in self.templates.items():
            if task != "seqrec" and not self.task_ratio.get(task):
                continue
            fixed = max(len(t.fill([])) for t in group)
            need = fixed + slot[task] + answer[task]
            if need > self.max_prompt:
                raise InputError(f"EAGERLLM's {task} sequences take up to {need} tokens (template "
                                 f"{fixed}, {slot[task]} in its slot, answer {answer[task]}), over "
                                 f"llm_max_prompt_tokens={self.max_prompt}: raise it")

    def _preference_answers(self, dataset, field):
        """Per item, its values of ``preference_field`` (e.g. categories, genre),
        less the values more than ``preference_exclude_share`` of all items hold:
        on Beauty every item is in "Beauty", and an answer that always starts
        with it carries no preference."""
        if not field:
            return None
        values = dataset.item_field_values(field)
        counts = {}
        for item_values in values[1:]:
            for v in set(item_values):
                counts[v] = counts.get(v, 0) + 1
        common = {v for v, n in counts.items()
                  if n > self.settings.preference_exclude_share * (len(values) - 1)}
        return [[v for v in item_values if v not in common] for item_values in values]

    # --------------------------------------------------------------- prompts
    def _history_ids(self, seq, length) -> list:
        """The items' code tokens, in order, the separator between two items."""
        out = []
        for n, item in enumerate(seq[:length]):
            if n:
                out += self.separator_ids
            out += self.index.token_ids(int(item))
        return out

    def _template(self, task: str, training: bool) -> Template:
        """At inference the task's first template, in training one drawn per row."""
        group = self.templates[task]
        return group[int(self.rng.integers(len(group)))] if training and len(group) > 1 \
            else group[0]

    def history_prompts(self, item_seq, item_len, training: bool = False) -> list:
        """Next-item prompts (token ids) of a batch of histories."""
        seqs, lens = item_seq.tolist(), item_len.tolist()
        return [self._template("seqrec", training).fill(self._history_ids(s, n))
                for s, n in zip(seqs, lens)]

    def _aux_samples(self, item_seq, item_len, targets):
        """Index <-> text reconstruction and preference understanding rows."""
        prompts, answers, tasks = [], [], []
        n = len(targets)
        items = targets.tolist()
        for task, ratio in self.task_ratio.items():
            count = int(math.ceil(ratio * n)) if ratio > 0 else 0
            rows = self.rng.choice(n, size=min(count, n), replace=False) if count else []
            for r in rows:
                item = items[r]
                if task == "item2index":
                    prompts.append(self._template(task, True).fill(self.item_text_ids[item]))
                    answers.append(self.index.token_ids(item))
                elif task == "index2item":
                    prompts.append(self._template(task, True).fill(self.index.token_ids(item)))
                    answers.append(self.item_text_ids[item] + [self.eos_id])
                elif task == "preference":
                    if self.preferences is None:
                        continue
                    length = int(item_len[r])
                    history = item_seq[r, :length].tolist()
                    counts = {}
                    for h in history:
                        for v in self.preferences[h]:
                            counts[v] = counts.get(v, 0) + 1
                    if not counts:
                        continue
                    top = sorted(counts, key=lambda v: (-counts[v], v))[:2]
                    answer = self.tokenizer(", ".join(top), add_special_tokens=False)["input_ids"]
                    prompts.append(self._template(task, True).fill(self._history_ids(history, length)))
                    answers.append(answer + [self.eos_id])
                else:
                    continue
                tasks.append(task)
        return prompts, answers, tasks

    # ------------------------------------------------------------------ train
    def calculate_loss(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        item_len = interaction[self.ITEM_SEQ_LEN]
        targets = interaction[self.POS_ITEM_ID]
        if self.annealing:  # AAT: high-quality recommendation samples only
            keep = item_len >= self.settings.aat_min_history
            if not keep.any():
                return sum(p.sum() * 0 for p in self.parameters() if p.requires_grad)
            item_seq, item_len, targets = item_seq[keep], item_len[keep], targets[keep]
        prompts = self.history_prompts(item_seq, item_len, training=True)
        answers = [self.index.token_ids(int(t)) for t in targets.tolist()]
        use_gct = not self.annealing and (self.gct_lambda_sem > 0 or self.gct_lambda_beh > 0)
        suffixes = [[self.con_id]] * len(prompts) if use_gct else None
        n_rec = len(prompts)
        tasks = ["seqrec"] * n_rec
        if not self.annealing:
            aux_prompts, aux_answers, aux_tasks = self._aux_samples(item_seq, item_len, targets)
            prompts, answers, tasks = prompts + aux_prompts, answers + aux_answers, tasks + aux_tasks
            if suffixes is not None:
                suffixes = suffixes + [[] for _ in aux_prompts]
        device = self.item_codes.device
        batch = training_batch(prompts, answers, self.pad_id, self.max_prompt, suffixes,
                               dtype=self.llm.dtype).to(device)
        loss, hidden = self.task_loss(batch, tasks)
        if use_gct:
            h_con = hidden[batch.ends[:n_rec, 0], batch.ends[:n_rec, 1]]  # [CON]'s last hidden state
            if self.settings.gct_projector == "linear":  # as the authors' code: unit length first
                h_con = F.normalize(h_con, dim=-1)
            negatives = self._gct_negatives(device)
            if self.gct_lambda_sem > 0:
                loss = loss + self.gct_lambda_sem * info_nce(
                    self.sem_proj(h_con), self.sem_emb[targets], self.gct_tau, targets,
                    self.sem_emb[negatives], negatives)
            if self.gct_lambda_beh > 0:
                loss = loss + self.gct_lambda_beh * info_nce(
                    self.beh_proj(h_con), self.beh_emb[targets], self.gct_tau, targets,
                    self.beh_emb[negatives], negatives)
        return loss

    def task_loss(self, batch, tasks: list):
        """Sum over tasks of ``task_loss_weights[task]`` x the task's mean token loss:
        pooled over tokens, a 49-token text answer would outweigh a 4-code
        recommendation answer; ``(loss, last hidden states)``."""
        logits, target, (rows, cols), hidden = answer_logits(self.llm, batch)
        token_loss = F.cross_entropy(logits, target, reduction="none")
        names = sorted(set(tasks))
        task_of_seq = torch.as_tensor([names.index(t) for t in tasks], device=token_loss.device)
        task_of_token = task_of_seq[batch.owner[rows, cols]]
        sums = torch.zeros(len(names), device=token_loss.device).index_add(0, task_of_token, token_loss)
        counts = torch.bincount(task_of_token, minlength=len(names)).clamp(min=1)
        weights = torch.as_tensor([float(self.loss_weights[t]) for t in names], device=sums.device)
        return (weights * sums / counts).sum(), hidden

    def _gct_negatives(self, device) -> torch.Tensor:
        """``gct_negatives`` items drawn uniformly (with replacement) per batch."""
        n = self.settings.gct_negatives
        if not n:
            return torch.zeros(0, dtype=torch.long, device=device)
        return torch.as_tensor(self.rng.integers(1, self.n_items, size=n), device=device)

    # -------------------------------------------------------------- annealing
    def start_annealing(self):
        """Freeze the stage-one model (a stage-one LoRA adapter merged into it)
        and add the annealing LoRA adapter."""
        from peft import LoraConfig, PeftModel, get_peft_model

        if self.annealing:
            return
        llm = self.llm.merge_and_unload() if isinstance(self.llm, PeftModel) else self.llm
        for p in self.parameters():
            p.requires_grad_(False)
        s = self.settings
        adapter = LoraConfig(r=s.aat_lora_r, lora_alpha=s.aat_lora_alpha, lora_dropout=s.lora_dropout,
                             target_modules=list(s.aat_target_modules) if s.aat_target_modules else None,
                             task_type="CAUSAL_LM")
        self.llm = get_peft_model(llm, adapter)
        self.annealing = True
        self.annealed.fill_(True)

    def end_annealing(self):
        """Back to the stage-one structure (annealing adapter removed, a stage-one
        LoRA adapter put back), ready for stage-one weights."""
        if not self.annealing:
            return
        llm = self.llm.unload()
        for p in self.parameters():
            p.requires_grad_(True)
        self.tune_llm(llm, self._new_token_ids)
        self.annealing = False
        self.annealed.fill_(False)

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """Weights of either phase: the checkpoint's ``annealed`` flag picks the
        structure (checkpoints written before the flag: LoRA keys in a fully
        tuned model mean annealed)."""
        from recbole_llm.llm.backbone import resolve_tuning

        if "annealed" in state_dict:
            annealed = bool(state_dict["annealed"])
        else:
            annealed = resolve_tuning(self.settings) == "full" and \
                any(".lora_A." in k for k in state_dict)
            state_dict = dict(state_dict, annealed=torch.tensor(annealed))
        if annealed:
            self.start_annealing()
        else:
            self.end_annealing()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _inference_llm(self):
        from contextlib import nullcontext

        if self.annealing and not self.settings.aat_keep_adapter:
            return self.llm.disable_adapter()
        return nullcontext()

    # ------------------------------------------------------------- inference
    @torch.no_grad()
    def recommend(self, item_seq, item_len, top_k: int = None):
        """Top items per history by constrained beam search: (items, log-probs)."""
        items, scores = [], []
        with self._inference_llm():
            for start in range(0, len(item_seq), self.beam_batch_size):
                prompts = self.history_prompts(item_seq[start:start + self.beam_batch_size],
                                            item_len[start:start + self.beam_batch_size])
                input_ids, mask = inference_batch(prompts, self.pad_id, self.max_prompt)
                device = self.item_codes.device
                i, s = constrained_beam_search(self.llm, input_ids.to(device), mask.to(device),
                                               self.trie, self.num_beams, top_k)
                items.append(i)
                scores.append(s)
        return torch.cat(items), torch.cat(scores)

    def full_sort_predict(self, interaction):
        items, scores = self.recommend(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return to_full_sort_scores(items, scores, self.n_items)

    @torch.no_grad()
    def predict(self, interaction):
        """Log-probability of each candidate item's codes (sampled evaluation)."""
        prompts = self.history_prompts(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        answers = [self.index.token_ids(int(i)) for i in interaction[self.ITEM_ID].tolist()]
        with self._inference_llm():
            return answer_logprob(self.llm, prompts, answers, self.pad_id, self.max_prompt)
