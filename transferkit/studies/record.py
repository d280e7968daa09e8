"""What a search leaves: the record kept in ``metrics.json`` and the bundle (``search``), ``search.json`` with every
trial and ``search.png`` (the report's section: :func:`transferkit.evaluation.report.search_lines`)."""

from __future__ import annotations

import math
import statistics
from typing import Any

import numpy as np

TOP = 5  # the spread of the best trials is read over this many
BOOT = 2000  # bootstrap resamples for the paired difference between searched and default settings


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One row per trial of the study: number, state, value, settings, seconds, worker, retried trial."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name.lower(),
                     "value": None if t.value is None else float(t.value), "params": dict(t.params),
                     "seconds": None if t.duration is None else round(t.duration.total_seconds(), 1),
                     "worker": t.user_attrs.get("worker"), "error": t.user_attrs.get("error"),
                     "retry_of": t.system_attrs.get("failed_trial"),
                     "steps": {str(k): float(v) for k, v in sorted(t.intermediate_values.items())}})
    return rows


def top_spread(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The best :data:`TOP` complete trials: their values (mean, sd) and, per setting, the range they span, so a
    reader sees whether the best value stands alone or the top is flat."""
    done = sorted((r for r in rows if r["state"] == "complete" and r["value"] is not None),
                  key=lambda r: -r["value"])[:TOP]
    if not done:
        return {"n": 0}
    values = [r["value"] for r in done]
    spans: dict[str, Any] = {}
    for key in sorted({k for r in done for k in r["params"]}):
        seen = [r["params"][key] for r in done if key in r["params"]]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in seen)
        spans[key] = [min(seen), max(seen)] if numeric else sorted(set(map(str, seen)))
    return {"n": len(done), "values": values, "mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0, "span": spans}


def paired_difference(searched: np.ndarray, defaults: np.ndarray, y: np.ndarray, balanced: bool,
                      seed: int = 0) -> dict[str, Any]:
    """Searched minus default settings on the same test examples, by the metric that chose the models (accuracy,
    balanced accuracy, mAP), with a 95% paired bootstrap interval (the same resampled examples score both)."""
    from ..strategies.base import probs_score

    a, b = probs_score(searched, y, balanced), probs_score(defaults, y, balanced)
    rng = np.random.default_rng(seed)
    n = len(y)
    diffs = []
    for _ in range(BOOT):
        idx = rng.integers(0, n, n)
        if y.ndim == 1 and len(np.unique(y[idx])) < 2:
            continue
        diffs.append(probs_score(searched[idx], y[idx], balanced) - probs_score(defaults[idx], y[idx], balanced))
    lo, hi = (float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))) if diffs else (math.nan, math.nan)
    verdict = ("no interval could be drawn (too few test examples of each kind)" if math.isnan(lo) else
               "the search paid off here" if lo > 0 else "the searched settings scored lower than the defaults"
               if hi < 0 else "no difference this test set can show: the defaults do as well")
    return {"searched": a, "defaults": b, "difference": a - b, "ci": [lo, hi], "n": n, "verdict": verdict}


def plot(rows: list[dict[str, Any]], metric: str) -> bytes:
    """Each trial's value in order (pruned trials at their last reported step, hollow) and the best so far, as PNG
    bytes."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    done = [(r["number"], r["value"]) for r in rows if r["state"] == "complete" and r["value"] is not None]
    pruned = [(r["number"], list(r["steps"].values())[-1]) for r in rows if r["state"] == "pruned" and r["steps"]]
    if done:
        ax.scatter(*zip(*done), color="tab:blue", label="complete", zorder=3)
        best, line = -math.inf, []
        for n, v in sorted(done):
            best = max(best, v)
            line.append((n, best))
        ax.step(*zip(*line), where="post", color="tab:orange", label="best so far")
    if pruned:
        ax.scatter(*zip(*pruned), facecolors="none", edgecolors="tab:gray", label="pruned (last step)", zorder=3)
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title("search: trials in order")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
