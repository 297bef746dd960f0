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
import numpy as np
import torch
import torch.nn.functional as F

from recbole_llm.distributed import gather_rows
from recbole_llm.errors import InputError
from recbole_llm.llm.encoder import item_text_embeddings
from recbole_llm.llm.token_init import TOKEN_INITS, PCAMap, code_centroids, seed_token_rows
from recbole_llm.model.conventional import checkpoint_item_embeddings, train_item_embeddings
from recbole_llm.model.eagerllm.index import build_dual_source_codes, index_key
from recbole_llm.model.eagerllm.settings import EAGERSettings
from recbole_llm.model.generative import GenerativeRecommender
from recbole_llm.model.layers import info_nce, projector
from recbole_llm.tokenization import ItemIndex, node_codes, prefix_blocks

CON_TOKEN = "[CON]"


class EAGERLLM(GenerativeRecommender):
    """RecBole sequential model; see the module docstring."""

    settings_class = EAGERSettings
    TASK_SLOTS = {"seqrec": "history", "item2index": "text", "index2item": "item",
                  "preference": "history"}

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        s = self.read_settings(config)
        cache = self.cache

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
        corpus = [t for t in texts if t] + [t for group in self.template_texts().values()
                                           for t in group] + [s.history_separator or ""]
        llm, code_ids, (self.con_id,) = self.load_llm(corpus, self.index.tokens(), [CON_TOKEN])
        self.trie = self.index.bind(self.tokenizer)
        self._new_token_ids = code_ids + [self.con_id]
        self._init_code_tokens(llm, sem, beh)
        self.tune_llm(llm, self._new_token_ids)

        # --- templates (the first of each task is the one used at inference), the
        # separator between history items, per-item token ids: tokenised once
        self.setup_prompts(s.history_separator)
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
        if self.task_ratio.get("preference") and self.preferences is None:
            self.logger.warning("the preference task is off: no preference_field names the .item "
                                "field it summarises (set preference_field, or "
                                "aux_task_ratio.preference: 0)")
        self.annealing = False
        # saved with the weights: a checkpoint says which structure it needs
        self.register_buffer("annealed", torch.tensor(False))
        self._check_lengths()

    @classmethod
    def check_settings(cls, final: dict) -> None:
        super().check_settings(final)
        init = final.get("code_token_init")
        if init not in TOKEN_INITS:
            raise InputError(f"code_token_init must be one of {', '.join(TOKEN_INITS)}, not {init!r}")
        if init == "centroid" and final.get("index_composition") == "random":
            raise InputError("code_token_init: centroid seeds each code token from the items it "
                             "names, which would give the random index's codes the knowledge the "
                             "ablation leaves out: set code_token_init: random (or mean)")

    # ------------------------------------------------------------------ index
    def _build_index(self, sem, beh, cache, dataset) -> ItemIndex:
        """Built once per embedding tables and settings (every setting keys it,
        so none that shapes it can be forgotten; a rebuild is deterministic)."""
        s = self.settings
        key = index_key(cache, sem, beh, s.key_parts(exclude=("code_token_init",),
                                                      memo_dir=cache.root))
        if cache.has_arrays(key):
            return ItemIndex.load(cache, key)
        codes, prefixes = build_dual_source_codes(
            sem[1:], beh[1:], s.index_composition, s.index_k, s.index_semantic_levels,
            s.index_behavior_levels, s.index_kmeans_iters, s.seed, s.index_quantizer)
        if s.index_collision == "extra_code":
            prefixes = prefixes + ["x"]
        index = ItemIndex.build(codes, collision=s.index_collision, k=s.index_k, prefixes=prefixes)
        if s.index_tokens == "node":  # after collisions: the map keeps rows unique
            raw = index.raw_collision_rate
            index = ItemIndex(node_codes(index.codes, prefix_blocks(prefixes)), prefixes)
            index.raw_collision_rate = raw
        index.save(cache, key)
        return index

    def _init_code_tokens(self, llm, sem, beh) -> None:
        """Code tokens' first rows (``code_token_init``): transformers' table mean
        (``mean``), random rows like the rest of the table (``random``), or the
        mean of the exogenous vectors of the items each token names, semantic
        levels from the text embeddings and behaviour levels from the behaviour
        table (``centroid``; an extra collision level, a rank among colliding
        items, gets random rows)."""
        s = self.settings
        if s.code_token_init == "mean":
            return
        hidden = llm.get_input_embeddings().weight.shape[1]
        rng = np.random.default_rng(s.seed)
        sources, maps = {}, {}
        if s.code_token_init == "centroid":
            sources = {"s": np.asarray(sem, dtype=np.float64)[1:],
                       "b": np.asarray(beh, dtype=np.float64)[1:]}
            maps = {p: PCAMap(x, hidden, s.seed + (p == "b")) for p, x in sources.items()}
        groups = []
        for level, prefix in enumerate(self.index.prefixes):
            codes = self.index.codes[1:, level]
            if prefix[0] in sources:  # centroids in the source's space, then mapped
                used, centroids = code_centroids(codes, sources[prefix[0]])
                vectors = maps[prefix[0]](centroids)
            else:
                used = np.unique(codes)
                vectors = rng.standard_normal((len(used), hidden))
            ids = self.tokenizer.convert_tokens_to_ids([self.index.token(level, c) for c in used])
            groups.append((ids, vectors))
        seed_token_rows(llm, groups, self._new_token_ids)

    def _check_lengths(self) -> None:
        """Every task's longest sequence fits ``llm_max_prompt_tokens`` (checked
        before training: prompts are never cut)."""
        codes, history = self.code_length(), self.history_length()
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
        self.check_task_lengths(slot, answer)

    def _preference_answers(self, dataset, field):
        """Per item, its values of ``preference_field`` (e.g. categories, genre),
        less the values more than ``preference_exclude_share`` of all items hold:
        on Beauty every item is in "Beauty", and an answer that always starts
        with it carries no preference."""
        if not field:
            return None
        return dataset.distinctive_field_values(field, self.settings.preference_exclude_share)

    # --------------------------------------------------------------- samples
    def _aux_samples(self, item_seq, item_len, targets):
        """Index <-> text reconstruction and preference understanding rows."""
        prompts, answers, tasks = [], [], []
        n = len(targets)
        items = targets.tolist()
        for task in self.task_ratio:
            for r in self.aux_rows(n, task):
                item = items[r]
                if task == "item2index":
                    prompts.append(self.template(task, True).fill(self.item_text_ids[item]))
                    answers.append(self.index.token_ids(item))
                elif task == "index2item":
                    prompts.append(self.template(task, True).fill(self.index.token_ids(item)))
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
                    prompts.append(self.template(task, True).fill(self.history_ids(history, length)))
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
                self.batch_token_counts()  # the step's collective, with the other processes
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
        batch, codes = self.packed_batch(prompts, answers, suffixes)
        loss, hidden = self.task_loss(batch, tasks, codes)
        if use_gct:
            h_con = hidden[batch.ends[:n_rec, 0], batch.ends[:n_rec, 1]]  # [CON]'s last hidden state
            if self.settings.gct_projector == "linear":  # as the authors' code: unit length first
                h_con = F.normalize(h_con, dim=-1)
            negatives = self._gct_negatives(device)
            # in-batch negatives: the whole batch's targets (every process's share)
            batch_targets, first = gather_rows(targets)
            if self.gct_lambda_sem > 0:
                loss = loss + self.gct_lambda_sem * info_nce(
                    self.sem_proj(h_con), self.sem_emb[batch_targets], self.gct_tau,
                    batch_targets, self.sem_emb[negatives], negatives, first)
            if self.gct_lambda_beh > 0:
                loss = loss + self.gct_lambda_beh * info_nce(
                    self.beh_proj(h_con), self.beh_emb[batch_targets], self.gct_tau,
                    batch_targets, self.beh_emb[negatives], negatives, first)
        return loss

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
        if self.annealing and not self.settings.aat_keep_adapter:
            return self.llm.disable_adapter()
        return super()._inference_llm()
