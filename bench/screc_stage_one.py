"""SCRec's stage one on Amazon Beauty 5-core: the codebooks with and without the
alignment loss (reconstruction error, codes used, collisions, alignment loss),
and the cost of stage two (one training step, beam search per 1,000 users).

    python bench/screc_stage_one.py

Builds the model as the benchmark rows do (SASRec row's item table, small
default backbone), without training stage two; writes
bench/results/screc_stage_one.md.
"""
import json
import os
import sys
import time

import torch

import bench_eagerllm
from recbole_llm.config import Config
from recbole_llm.quick_start import build
from recbole_llm.utils import configure_cpu

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = {"align (default)": {}, "no_align": {"align_weight": 0.0}}


def measure(name, extra, threads):
    settings = dict(bench_eagerllm.COMMON, model="SCRec", llm_hidden_size=128, llm_num_layers=2,
                    llm_num_heads=4, train_batch_size=64, beam_batch_size=64, epochs=1,
                    state="WARNING", cpu_threads=threads,
                    behavior_checkpoint=bench_eagerllm.row("sasrec")["checkpoint"], **extra)
    start = time.time()
    config = Config(model="SCRec", dataset="amazon_beauty_5core", config_dict=settings, argv=[])
    configure_cpu(threads)
    _, (train, valid, _), model, _ = build(config)
    report = dict(model.tokenizer_report, build_s=round(time.time() - start, 1))
    if extra:
        return report
    model.train()
    batches = iter(train)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    next(batches)
    start = time.time()
    for _ in range(10):
        opt.zero_grad()
        model.calculate_loss(next(batches)).backward()
        opt.step()
    report["step_s"] = round((time.time() - start) / 10, 3)
    report["steps_per_epoch"] = len(train)
    model.eval()
    batch = next(iter(valid))[0]
    start = time.time()
    model.recommend(batch["item_id_list"][:256], batch["item_length"][:256])
    report["beam_s_per_1k_users"] = round((time.time() - start) / 256 * 1000, 2)
    return report


def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    os.chdir(os.path.join(HERE, ".."))
    rows = {name: measure(name, extra, threads) for name, extra in VARIANTS.items()}
    lines = ["Amazon Beauty 5-core, SCRec stage one (4 codebooks of 256 over the SASRec row's item "
             f"table, 200 epochs), {threads} thread(s).  Reconstruction error is relative to the "
             "data's variance; alignment is the InfoNCE of a 1,024-item batch (chance: ln 1024 = "
             "6.93).", "",
             "| codebooks | rec. error | codes used per level | perplexity per level | raw collision "
             "rate | dead codes reset | alignment first -> last epoch | build (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['reconstruction_error']:.3f} | {r['codes_used']} | "
                     f"{r['code_perplexity']} | {r['collision_rate']:.4f} | {r['dead_codes_reset']} | "
                     f"{r['epochs'][0]['alignment']:.2f} -> {r['epochs'][-1]['alignment']:.2f} | "
                     f"{r['build_s']} |")
    r = rows["align (default)"]
    lines += ["", f"Stage two on this machine: {r['step_s']} s per training step of 64 rows plus "
              f"their auxiliary rows, {r['steps_per_epoch']} steps per epoch "
              f"({r['step_s'] * r['steps_per_epoch'] / 60:.0f} min); beam search (20 beams) "
              f"{r['beam_s_per_1k_users']} s per 1,000 users."]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(HERE, "results", "screc_stage_one.md"), "w") as f:
        f.write(text)
    with open(os.path.join(HERE, "results", "screc_stage_one.json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
