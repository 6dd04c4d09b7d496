"""Reports over evaluated runs: a Markdown file and a self-contained HTML page (plots embedded
as base64 PNG data URIs) with the TOFU table and plots (forget quality vs model utility, forget
truth-ratio histograms against the retain model, per-metric bars).

Run-directory layout read here::

    RUN_DIR/run.json            manifest (llm_unlearn.runinfo.write_manifest); optional. Keys used:
                                name, role (target | retain | unlearned), method, kind, split,
                                run_time_s (or runtime_s / train_runtime / elapsed_s)
    RUN_DIR/eval/summary.json   `llm-unlearn eval` output (also accepted: RUN_DIR/summary.json)
    RUN_DIR/eval/per_item.json  per-item values (used for the truth-ratio histograms)
    RUN_DIR/attacks/attacks.json  `llm-unlearn attack` output (or the ``attacks`` entry of
                                eval/summary.json from ``eval --attacks``): the robustness table and
                                the recovery plot (`llm_unlearn.eval.attacks.find_attack_summary`)

A run without a metric (no eval, no retain logs, no holdout split) shows "n/a".
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llm_unlearn.errors import UnlearnError
from llm_unlearn.eval.attacks import RECOVERY_METRICS, find_attack_summary
from llm_unlearn.eval.logs import format_value, read_logs, split_truth_ratios
from llm_unlearn.runinfo import read_manifest

TABLE_COLUMNS = [  # (summary metric key or special, header)
    ("forget_quality", "Forget quality"),
    ("model_utility", "Model utility"),
    ("forget_rougeL_recall", "Forget ROUGE-L"),
    ("forget_probability", "Forget prob."),
    ("forget_truth_ratio", "Forget truth ratio"),
    ("mia_auc_min_k", "MIA AUC (Min-K%)"),
    ("privleak", "PrivLeak %"),
    ("run_time_s", "Run time (s)"),
]
BAR_METRICS = ["forget_quality", "model_utility", "forget_rougeL_recall", "forget_probability",
               "forget_truth_ratio", "retain_rougeL_recall", "mia_auc_min_k"]
RUN_TIME_KEYS = ("run_time_s", "runtime_s", "train_runtime", "elapsed_s")


@dataclass
class RunRecord:
    """One run as the report sees it."""

    name: str
    path: Path
    role: str  # target | retain | unlearned
    manifest: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    forget_truth_ratios: np.ndarray | None = None
    attacks: dict[str, Any] | None = None

    def metric(self, key: str) -> float | None:
        if key == "run_time_s":
            for k in RUN_TIME_KEYS:
                if isinstance(self.manifest.get(k), (int, float)):
                    return float(self.manifest[k])
            return None
        v = self.summary.get("metrics", {}).get(key)
        return float(v) if isinstance(v, (int, float)) and not math.isnan(v) else None

    def reason(self, key: str) -> str | None:
        if not self.summary:
            return "not evaluated"
        return self.summary.get("not_available", {}).get(key)


def _infer_role(name: str, manifest: dict[str, Any]) -> str:
    role = manifest.get("role")
    if role in ("target", "retain", "unlearned"):
        return role
    split = str(manifest.get("split", ""))
    if manifest.get("kind") == "finetune":
        return "retain" if split.startswith("retain") else "target"
    lname = name.lower()
    if "retain" in lname:
        return "retain"
    if "target" in lname:
        return "target"
    return "unlearned"


def load_run(run_dir: str | Path) -> RunRecord:
    """Read a run directory (see the module docstring); missing pieces become empty."""
    path = Path(run_dir)
    if not path.is_dir():
        raise UnlearnError(f"run directory not found: {path}")
    manifest = read_manifest(path)
    eval_dir = path / "eval" if (path / "eval" / "summary.json").is_file() else path
    summary = {}
    if (eval_dir / "summary.json").is_file():
        try:
            summary = json.loads((eval_dir / "summary.json").read_text())
        except json.JSONDecodeError as exc:
            raise UnlearnError(f"{eval_dir / 'summary.json'}: invalid JSON ({exc.msg})") from None
    name = str(manifest.get("name") or path.name)
    rec = RunRecord(name=name, path=path, role=_infer_role(name, manifest), manifest=manifest, summary=summary)
    if (eval_dir / "per_item.json").is_file():
        logs = read_logs(eval_dir / "per_item.json")
        if "forget" in logs.splits:
            rec.forget_truth_ratios = split_truth_ratios(logs.splits["forget"])
    rec.attacks = find_attack_summary(path)
    return rec


# ------------------------------------------------------------------------------------------
# plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


ROLE_STYLE = {"target": ("#d62728", "*", 220), "retain": ("#2ca02c", "D", 110), "unlearned": ("#1f77b4", "o", 70)}


def plot_fq_vs_mu(runs: list[RunRecord], path: Path) -> Path:
    """Forget quality (log scale) against model utility, target and retain marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    shown = set()
    skipped = []
    for r in runs:
        fq, mu = r.metric("forget_quality"), r.metric("model_utility")
        if fq is None or mu is None:
            skipped.append(r.name)
            continue
        color, marker, size = ROLE_STYLE[r.role]
        label = r.role if r.role not in shown else None
        shown.add(r.role)
        ax.scatter([mu], [max(fq, 1e-300)], c=color, marker=marker, s=size, label=label, edgecolors="black", zorder=3)
        ax.annotate(r.name, (mu, max(fq, 1e-300)), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("model utility")
    ax.set_ylabel("forget quality (KS p-value, log)")
    ax.set_title("Forget quality vs model utility")
    ax.grid(True, which="both", alpha=0.3)
    if shown:
        ax.legend(loc="best", fontsize=8)
    if skipped:
        ax.text(0.01, 0.01, "n/a (not plotted): " + ", ".join(skipped), transform=ax.transAxes, fontsize=7, color="gray")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_truth_ratio_histograms(runs: list[RunRecord], path: Path) -> Path:
    """Per-item forget truth ratios of each model against the retain model's."""
    plt = _plt()
    retain = next((r for r in runs if r.role == "retain" and r.forget_truth_ratios is not None), None)
    others = [r for r in runs if r is not retain]
    n = max(1, len(others))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    all_vals = [r.forget_truth_ratios for r in runs if r.forget_truth_ratios is not None]
    if all_vals:
        lo = min(float(np.min(v)) for v in all_vals)
        hi = max(float(np.max(v)) for v in all_vals)
        bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 21)
    for ax, r in zip(axes.flat, others):
        if r.forget_truth_ratios is None:
            ax.text(0.5, 0.5, "n/a (no per-item logs)", ha="center", va="center", transform=ax.transAxes)
        else:
            if retain is not None:
                ax.hist(retain.forget_truth_ratios, bins=bins, alpha=0.5, color="#2ca02c", label=f"retain ({retain.name})")
            ax.hist(r.forget_truth_ratios, bins=bins, alpha=0.6, color=ROLE_STYLE[r.role][0], label=r.name)
            ax.legend(fontsize=7)
        ax.set_title(r.name, fontsize=9)
        ax.set_xlabel("forget truth ratio R")
    for ax in list(axes.flat)[len(others):]:
        ax.axis("off")
    fig.suptitle("Forget truth ratios vs the retain model", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_metric_bars(runs: list[RunRecord], path: Path, metrics: list[str] | None = None) -> Path:
    """One bar chart per metric across runs (missing values drawn as an 'n/a' label)."""
    plt = _plt()
    metrics = metrics or BAR_METRICS
    cols = 4
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
    x = np.arange(len(runs))
    for ax, key in zip(axes.flat, metrics):
        vals = [r.metric(key) for r in runs]
        heights = [v if v is not None else 0.0 for v in vals]
        ax.bar(x, heights, color=[ROLE_STYLE[r.role][0] for r in runs])
        if key == "forget_quality" and any(v for v in vals):
            ax.set_yscale("log")
            ax.set_ylim(bottom=max(min(v for v in vals if v), 1e-300) / 10)
        for xi, v in zip(x, vals):
            if v is None:
                ax.text(xi, 0, "n/a", ha="center", va="bottom", fontsize=7, color="gray")
        ax.set_xticks(x, [r.name for r in runs], rotation=45, ha="right", fontsize=7)
        ax.set_title(key, fontsize=9)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def attack_order(runs: list[RunRecord]) -> list[str]:
    """Attack result names over all runs with attack summaries, in first-seen order."""
    names: dict[str, None] = {}
    for r in runs:
        for name in (r.attacks or {}).get("attacks", {}):
            names.setdefault(name, None)
    return list(names)


def _recovery(run: RunRecord, attack: str, metric: str) -> float | None:
    v = ((run.attacks or {}).get("attacks", {}).get(attack, {}).get("recovery") or {}).get(metric)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def plot_recovery(runs: list[RunRecord], path: Path) -> Path:
    """Recovery per attack per run (grouped bars; one panel for forget probability, one for
    ROUGE-L): 0 = the attack brings nothing back, 1 = it brings back the target."""
    plt = _plt()
    attacked = [r for r in runs if r.attacks]
    names = attack_order(attacked)
    panel_w = max(4.0, 0.35 * len(names) * max(1, len(attacked)) + 1.5)
    fig, axes = plt.subplots(1, len(RECOVERY_METRICS), figsize=(panel_w * len(RECOVERY_METRICS), 3.8), squeeze=False)
    x = np.arange(len(names))
    width = 0.8 / max(1, len(attacked))
    cmap = plt.get_cmap("tab10")
    for ax, metric in zip(axes.flat, RECOVERY_METRICS):
        for k, r in enumerate(attacked):
            vals = [_recovery(r, a, metric) for a in names]
            ax.bar(x + (k - (len(attacked) - 1) / 2) * width, [v if v is not None else 0.0 for v in vals], width,
                   color=cmap(k % 10), label=r.name)
            for xi, v in zip(x, vals):
                if v is None:
                    ax.text(xi + (k - (len(attacked) - 1) / 2) * width, 0, "n/a", ha="center", va="bottom",
                            fontsize=6, color="gray", rotation=90)
        ax.axhline(0.0, color="black", lw=0.8)
        ax.axhline(1.0, color="#d62728", lw=0.8, ls="--")
        ax.set_xticks(x, names, rotation=45, ha="right", fontsize=7)
        ax.set_title(f"recovery of forget {metric.replace('_', ' ')}", fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    axes.flat[0].set_ylabel("(attacked - unlearned) / (target - unlearned)")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def robustness_table(runs: list[RunRecord]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: per run with attacks, each attack's recovery (forget probability /
    ROUGE-L) and the CKA means against the target and the retain model."""
    attacked = [r for r in runs if r.attacks]
    names = attack_order(attacked)
    cka_pairs = [p for p in ("unlearned_vs_target", "unlearned_vs_retain")
                 if any(p in (r.attacks or {}).get("cka", {}) for r in attacked)]
    headers = ["Run"] + [f"{n} (prob. / ROUGE-L)" for n in names] + [f"CKA {p.split('_vs_')[1]}" for p in cka_pairs]
    rows = []
    for r in attacked:
        cells = [r.name]
        for n in names:
            p, q = _recovery(r, n, "probability"), _recovery(r, n, "rougeL_recall")
            cells.append(" / ".join("n/a" if v is None else f"{v:.2f}" for v in (p, q)))
        for pair in cka_pairs:
            v = (r.attacks or {}).get("cka", {}).get(pair, {}).get("mean")
            cells.append("n/a" if v is None else f"{v:.3f}")
        rows.append(cells)
    return headers, rows


# ------------------------------------------------------------------------------------------
# tables and documents


def table_rows(runs: list[RunRecord]) -> list[list[str]]:
    rows = []
    for r in runs:
        cells = [r.name, r.role]
        for key, _ in TABLE_COLUMNS:
            v = r.metric(key)
            cells.append(f"{v:.1f}" if key == "run_time_s" and v is not None else format_value(v, key))
        rows.append(cells)
    return rows


def _notes(runs: list[RunRecord]) -> list[str]:
    notes = []
    for r in runs:
        s = r.summary
        if not s:
            notes.append(f"{r.name}: no eval summary found (all metrics n/a)")
            continue
        fq, floor = r.metric("forget_quality"), r.metric("forget_quality_floor")
        if fq is not None and floor is not None and fq <= floor * (1 + 1e-9):
            notes.append(f"{r.name}: forget quality {format_value(fq, 'forget_quality')} is the smallest p-value "
                         f"reachable with these item counts (complete separation), a bound, not a measurement")
        for key, _ in TABLE_COLUMNS:
            reason = r.reason(key)
            if r.metric(key) is None and reason and key != "run_time_s":
                notes.append(f"{r.name}: {key} n/a: {reason}")
    return notes


def build_report(run_dirs: list[str | Path], out_dir: str | Path, title: str = "llm-unlearn TOFU report") -> dict[str, Path]:
    """Markdown (``report.md``), self-contained HTML (``report.html``) and PNG plots
    (``fq_vs_mu.png``, ``truth_ratio_hist.png``, ``metric_bars.png``, and ``recovery.png`` with a
    robustness table when a run has attack results) in `out_dir`; returns the paths."""
    if not run_dirs:
        raise UnlearnError("no run directories given")
    runs = [load_run(d) for d in run_dirs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = {
        "fq_vs_mu": plot_fq_vs_mu(runs, out / "fq_vs_mu.png"),
        "truth_ratio_hist": plot_truth_ratio_histograms(runs, out / "truth_ratio_hist.png"),
        "metric_bars": plot_metric_bars(runs, out / "metric_bars.png"),
    }
    if any(r.attacks for r in runs):
        plots["recovery"] = plot_recovery(runs, out / "recovery.png")
    rob_headers, rob_rows = robustness_table(runs)
    headers = ["Run", "Role"] + [h for _, h in TABLE_COLUMNS]
    rows = table_rows(runs)
    notes = _notes(runs)
    defs = next((r.summary.get("definitions") for r in runs if r.summary.get("definitions")), {})
    captions = {"fq_vs_mu": "Forget quality (log scale) vs model utility; target and retain marked",
                "truth_ratio_hist": "Forget truth-ratio histograms of each model vs the retain model",
                "metric_bars": "Per-metric bars",
                "recovery": "Recovery per attack per run: 0 = nothing comes back, 1 = the target's level"}
    rob_intro = ("Recovery = (attacked - unlearned) / (target - unlearned) on the attack's items (relearn_k: "
                 "finetuned k steps on half A of the forget authors, measured on half B), forget probability / "
                 "ROUGE-L; n/a where the run is at the target's level. CKA: mean over layers of linear CKA of "
                 "hidden states on the forget items.")

    md = [f"# {title}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    md += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    md += [""]
    if notes:
        md += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    if rob_rows:
        md += ["## Robustness", "", rob_intro, "", "| " + " | ".join(rob_headers) + " |", "|" + "---|" * len(rob_headers)]
        md += ["| " + " | ".join(rob_rows_i) + " |" for rob_rows_i in rob_rows] + [""]
    for key, p in plots.items():
        md += [f"![{captions[key]}]({p.name})", ""]
    if defs:
        md += ["## Definitions", ""] + [f"- **{k}**: {v}" for k, v in defs.items()] + [""]
    (out / "report.md").write_text("\n".join(md))

    def img(p: Path) -> str:
        return "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii")

    esc = html.escape
    h = ["<!DOCTYPE html><html><head><meta charset='utf-8'>", f"<title>{esc(title)}</title>",
         "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
         "th,td{border:1px solid #bbb;padding:4px 8px;text-align:right}th{background:#eee}"
         "td:first-child,td:nth-child(2){text-align:left}img{max-width:100%}</style></head><body>",
         f"<h1>{esc(title)}</h1>", "<table id='results'><thead><tr>"
         + "".join(f"<th>{esc(c)}</th>" for c in headers) + "</tr></thead><tbody>"]
    h += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows]
    h += ["</tbody></table>"]
    if notes:
        h += ["<h3>Notes</h3><ul>"] + [f"<li>{esc(n)}</li>" for n in notes] + ["</ul>"]
    if rob_rows:
        h += ["<h2>Robustness</h2>", f"<p>{esc(rob_intro)}</p>", "<table id='robustness'><thead><tr>"
              + "".join(f"<th>{esc(c)}</th>" for c in rob_headers) + "</tr></thead><tbody>"]
        h += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rob_rows] + ["</tbody></table>"]
    for key, p in plots.items():
        h += [f"<figure><img alt='{esc(captions[key])}' src='{img(p)}'><figcaption>{esc(captions[key])}"
              "</figcaption></figure>"]
    if defs:
        h += ["<h2>Definitions</h2><dl>"] + [f"<dt><b>{esc(k)}</b></dt><dd>{esc(v)}</dd>" for k, v in defs.items()]
        h += ["</dl>"]
    h += ["</body></html>"]
    (out / "report.html").write_text("\n".join(h))
    return {"markdown": out / "report.md", "html": out / "report.html", **plots}
