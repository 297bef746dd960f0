"""The comparison's outputs: per-run and per-model CSV, a markdown table, PNG plots.

Per model, metrics are the mean over the seeds that finished, with the
sample standard deviation (n - 1) as the spread; times are means, peak
memory the largest of the runs.  The ratio column divides each model's
mean validation metric on the test split by the first listed model's (the
baseline), so a reader sees at once who beats it; call a difference real
only when it exceeds the spread.
"""
import csv
import os
import statistics

RUN_COLUMNS = ["model", "seed", "prepare_s", "fit_s", "eval_s", "peak_rss_mib", "peak_cuda_mib",
               "trainable_params", "total_params", "validations", "error"]


def summarize(models, runs) -> list:
    """One summary per model, in the order given: ``{model, seeds, test, test_std,
    fit_s, eval_s, peak_rss_mib, peak_cuda_mib, trainable_params, errors}``."""
    rows = []
    for model in models:
        mine = [r for r in runs if r["model"] == model]
        ok = [r for r in mine if not r.get("error")]
        row = {"model": model, "seeds": [r["seed"] for r in ok],
               "errors": [f"seed {r['seed']}: {r['error']}" for r in mine if r.get("error")]}
        if ok:
            metrics = list(ok[0]["test"])
            row["test"] = {m: statistics.fmean(r["test"][m] for r in ok) for m in metrics}
            row["test_std"] = ({m: statistics.stdev(r["test"][m] for r in ok) for m in metrics}
                               if len(ok) > 1 else None)
            for key in ("prepare_s", "fit_s", "eval_s"):
                row[key] = statistics.fmean(r[key] for r in ok)
            row["peak_rss_mib"] = max(r["peak_rss_mib"] for r in ok)
            cuda = [r["peak_cuda_mib"] for r in ok if r.get("peak_cuda_mib") is not None]
            row["peak_cuda_mib"] = max(cuda) if cuda else None
            row["trainable_params"] = ok[0]["trainable_params"]
            row["curves"] = [r["valid_curve"] for r in ok]
        rows.append(row)
    return rows


def metric_names(summary) -> list:
    for row in summary:
        if row.get("test"):
            return list(row["test"])
    return []


def _cell(row, metric) -> str:
    if not row.get("test") or metric not in row["test"]:
        return "-"
    text = f"{row['test'][metric]:.4f}"
    if row.get("test_std"):
        text += f" ± {row['test_std'][metric]:.4f}"
    return text


def _ratio(row, base, metric) -> str:
    try:
        return f"{row['test'][metric] / base['test'][metric]:.2f}x"
    except (KeyError, TypeError, ZeroDivisionError):
        return "-"


def _params(n) -> str:
    return "-" if n is None else (f"{n / 1e6:.2f}M" if n >= 1e5 else str(n))


def markdown(summary, header: str, main_metric: str) -> str:
    metrics = metric_names(summary)
    base = summary[0]
    cols = ["model", *metrics, f"{main_metric} / {base['model']}", "seeds", "prepare (s)",
            "fit (s): train + validation",
            "test eval (s)", "peak RSS (MiB)", "peak GPU (MiB)", "trainable params", "errors"]
    lines = [header, "", "| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    for row in summary:
        ok = bool(row.get("test"))
        cells = [row["model"], *(_cell(row, m) for m in metrics),
                 _ratio(row, base, main_metric) if ok else "-",
                 ",".join(map(str, row["seeds"])) or "-",
                 f"{row['prepare_s']:.1f}" if ok else "-", f"{row['fit_s']:.1f}" if ok else "-",
                 f"{row['eval_s']:.2f}" if ok else "-",
                 f"{row['peak_rss_mib']:.0f}" if ok else "-",
                 f"{row['peak_cuda_mib']:.0f}" if ok and row["peak_cuda_mib"] is not None else "-",
                 _params(row.get("trainable_params")),
                 "; ".join(e.replace("|", "/").replace("\n", " ") for e in row["errors"]) or ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(path, runs, summary) -> list:
    """``runs.csv`` (one line per model and seed) and ``summary.csv`` (per model)."""
    metrics = metric_names(summary)
    runs_path, summary_path = os.path.join(path, "runs.csv"), os.path.join(path, "summary.csv")
    with open(runs_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(RUN_COLUMNS[:2] + metrics + RUN_COLUMNS[2:])
        for r in runs:
            ok = not r.get("error")
            writer.writerow([r["model"], r["seed"],
                             *(r["test"].get(m, "") if ok else "" for m in metrics),
                             *(r.get(k, "") if ok else "" for k in RUN_COLUMNS[2:-2]),
                             len(r.get("valid_curve") or []) if ok else "", r.get("error") or ""])
    with open(summary_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "n_seeds"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")]
                        + ["prepare_s", "fit_s", "eval_s", "peak_rss_mib", "peak_cuda_mib",
                           "trainable_params", "errors"])
        for row in summary:
            ok = bool(row.get("test"))
            values = []
            for m in metrics:
                values += [row["test"][m] if ok else "",
                           row["test_std"][m] if ok and row.get("test_std") else ""]
            writer.writerow([row["model"], len(row["seeds"]), *values,
                             *(row.get(k, "") if ok else "" for k in
                               ("prepare_s", "fit_s", "eval_s", "peak_rss_mib", "peak_cuda_mib",
                                "trainable_params")), "; ".join(row["errors"])])
    return [runs_path, summary_path]


def plot(path, summary, main_metric: str) -> list:
    """``metrics.png``: each metric's mean per model, the spread as error bars;
    ``curves.png``: the validation ``main_metric`` after every epoch, one line
    per model and seed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [row for row in summary if row.get("test")]
    metrics = metric_names(summary)
    files = []
    if not done:
        return files
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(metrics) * max(1, len(done)) / 2), 4))
    width = 0.8 / len(done)
    for i, row in enumerate(done):
        xs = [j + i * width for j in range(len(metrics))]
        errs = [row["test_std"][m] for m in metrics] if row.get("test_std") else None
        ax.bar(xs, [row["test"][m] for m in metrics], width, yerr=errs, capsize=3,
               label=row["model"])
    ax.set_xticks([j + width * (len(done) - 1) / 2 for j in range(len(metrics))])
    ax.set_xticklabels(metrics, rotation=30)
    ax.set_ylabel("test (mean over seeds)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    files.append(os.path.join(path, "metrics.png"))
    fig.savefig(files[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    key = main_metric.lower()
    for i, row in enumerate(done):
        color = f"C{i % 10}"
        for j, curve in enumerate(row["curves"]):
            points = [(e + 1, c[key]) for e, c in enumerate(curve) if key in c]
            if points:
                ax.plot(*zip(*points), color=color, marker=".", alpha=0.8,
                        label=row["model"] if j == 0 else None)
    ax.set_xlabel("validation (epoch)")
    ax.set_ylabel(f"valid {main_metric}")
    ax.legend(fontsize="small")
    fig.tight_layout()
    files.append(os.path.join(path, "curves.png"))
    fig.savefig(files[-1], dpi=120)
    plt.close(fig)
    return files
