"""The comparison's statistics: per-cell means and intervals over seeds, the headline sentences (time, labels,
overfitting gap, classical baseline), and where the test set is too small to tell two strategies apart."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .runs import ALL, CLASSICAL, duration


def seed_interval(values: list[float],
                  bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float | None, float | None]:
    """Mean and 95% Student-t interval of per-seed values, clipped to the metric's ``bounds``; no interval from a
    single seed.

    >>> m, lo, hi = seed_interval([0.70, 0.74, 0.72])
    >>> round(m, 3), round(lo, 3), round(hi, 3)
    (0.72, 0.67, 0.77)
    """
    x = np.asarray([v for v in values if v is not None], dtype=float)
    if len(x) == 0:
        return float("nan"), None, None
    mean = float(x.mean())
    if len(x) < 2:
        return mean, None, None
    from scipy.stats import t

    half = float(t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, max(bounds[0], mean - half), min(bounds[1], mean + half)


def summarise(runs: list[dict], strategies: list[str], budgets: list) -> list[dict[str, Any]]:
    """Per budget and strategy: mean and 95% interval over seeds of the test score and of the gap."""
    rows = []
    for b in budgets:
        for name in strategies:
            sel = [r for r in runs if r["budget"] == str(b) and r["strategy"] == name]
            if not sel:
                continue
            m, lo, hi = seed_interval([r["score"] for r in sel])
            g, glo, ghi = seed_interval([r["gap"] for r in sel], bounds=(-1.0, 1.0))
            g = None if g != g else g  # no gap (the classical baseline): None, which JSON can hold and NaN cannot
            rows.append({"budget": str(b), "strategy": name, "seeds": len(sel),
                         "labels_per_class": float(np.mean([r["labels_per_class"] for r in sel])),
                         "score": m, "score_lo": lo, "score_hi": hi, "gap": g, "gap_lo": glo, "gap_hi": ghi,
                         "wall_s": float(np.mean([r["wall_s"] for r in sel])),
                         "test_accuracy_ci": sel[0].get("test_accuracy_ci")})
    return rows


def summary_cell(summary: list[dict], budget, name: str) -> dict | None:
    """The summary row of one budget and strategy, or None where it has no run."""
    return next((r for r in summary if r["budget"] == str(budget) and r["strategy"] == name), None)



def metric_label(metric: str) -> str:
    """How a report names the comparison's metric: AUROC, mAP, macro F1, balanced accuracy ..."""
    return {"auroc": "AUROC", "map": "mAP", "macro_f1": "macro-F1", "micro_f1": "micro-F1"}.get(
        metric, metric.replace("_", " "))

def headlines(runs: list[dict], summary: list[dict], strategies: list[str], budgets: list,
              metric: str) -> dict[str, Any]:
    """The three answers, each one sentence with its numbers: time saved to reach scratch's best validation
    score, labels per class needed to match scratch with the most labels, and the overfitting gap; with
    ``classical`` among the strategies a fourth, ``classical``: the budgets where the classical baseline beats
    every transfer strategy."""
    transfer = [s for s in strategies if s not in ("scratch", CLASSICAL)]
    label = metric_label(metric)
    extra = {"classical": _classical_headline(runs, summary, transfer, budgets, label)} if CLASSICAL in strategies \
        else {}
    msg = None
    if "scratch" not in strategies:
        msg = "Add scratch to the strategies to measure what transfer saved against training from scratch."
    elif not transfer:
        msg = "Add a transfer strategy (e.g. linear or finetune) to measure what transfer saved against scratch."
    if msg:
        return {"time": {"sentence": msg}, "labels": {"sentence": msg}, "gap": {"sentence": msg}, **extra}
    top = budgets[-1]
    return {"time": _time_headline(runs, transfer, top), "labels": _labels_headline(summary, transfer, budgets, label),
            "gap": _gap_headline(summary, transfer, budgets, gap_label(runs)), **extra}


def _where(budget) -> str:
    return "with all labels" if budget == ALL else f"at {budget} labels per class"


def _classical_headline(runs: list[dict], summary: list[dict], transfer: list[str], budgets: list,
                        label: str) -> dict[str, Any]:
    """Where the classical baseline's mean test score is above every transfer strategy's: said plainly, budget by
    budget, since transfer has not paid off there whatever it did against scratch."""
    # images: each run keeps the candidate features that cross-validate best, so runs may differ
    kept = " or ".join(dict.fromkeys(r["kept"] for r in runs if r["strategy"] == CLASSICAL and r.get("kept"))) or None
    name = f"the classical baseline ({kept})" if kept else "the classical baseline"
    rows = []
    for b in budgets:
        base = summary_cell(summary, b, CLASSICAL)
        others = [c for n in transfer if (c := summary_cell(summary, b, n)) is not None]
        if base is not None and others:
            best = max(others, key=lambda c: c["score"])
            rows.append({"budget": str(b), "classical": base["score"], "transfer": best["score"],
                         "strategy": best["strategy"], "wins": base["score"] > best["score"]})
    out: dict[str, Any] = {"baseline": kept, "per_budget": rows, "wins": [r["budget"] for r in rows if r["wins"]]}
    if not rows:
        return {**out, "sentence": f"No budget has both {name} and a transfer strategy to compare."}
    if out["wins"]:
        said = "; ".join(f"{_where(r['budget'])}: {r['classical']:.3f} against {r['strategy']}'s {r['transfer']:.3f}"
                         for r in rows if r["wins"])
        lost = [_where(r["budget"]) for r in rows if not r["wins"]]
        tail = f" Transfer is at least as good {', '.join(lost)}." if lost else " It does so at every budget compared."
        sentence = f"{name[0].upper() + name[1:]} beats transfer {said} (test {label}).{tail}"
        return {**out, "sentence": sentence}
    close = min(rows, key=lambda r: r["transfer"] - r["classical"])
    verb = "beat" if all(r["transfer"] > r["classical"] for r in rows) else "matched or beat"
    return {**out, "sentence": f"Transfer {verb} {name} at every budget; the closest {_where(close['budget'])}: "
                               f"{close['strategy']} {close['transfer']:.3f} against {close['classical']:.3f} "
                               f"(test {label})."}


def _reach(curve: list, target: float) -> float | None:
    """Seconds until the validation score first reached ``target`` (1e-9 tolerance), or None."""
    return next((t for t, v in curve if v >= target - 1e-9), None)


def _time_headline(runs: list[dict], transfer: list[str], top) -> dict[str, Any]:
    per = {}
    scratch = {r["seed"]: r for r in runs if r["budget"] == str(top) and r["strategy"] == "scratch" and r["curve"]}
    for name in transfer:
        times, base, reached = [], [], 0
        for r in runs:
            if r["budget"] != str(top) or r["strategy"] != name or r["seed"] not in scratch:
                continue
            s = scratch[r["seed"]]
            target = max(v for _, v in s["curve"])
            t_scratch = _reach(s["curve"], target)
            t_transfer = _reach(r["curve"], target)
            base.append(t_scratch)
            if t_transfer is not None:
                reached += 1
                times.append(t_transfer)
        if base:
            per[name] = {"seeds": len(base), "reached": reached, "scratch_s": float(np.mean(base)),
                         "transfer_s": float(np.mean(times)) if times else None}
    both = {k: v for k, v in per.items() if v["reached"] == v["seeds"]}
    where = f"with {top} labels per class" if top != ALL else "with all labels"
    if not per:
        return {"sentence": "No run recorded a validation curve, so the time to reach scratch's best is unknown.",
                "per_strategy": per}
    if not both:
        best = max(per, key=lambda k: per[k]["reached"])
        p = per[best]
        return {"sentence": f"No transfer strategy reached scratch's best validation score in every seed {where} "
                            f"({best} did in {p['reached']} of {p['seeds']}): transfer saved no time here.",
                "per_strategy": per}
    name = min(both, key=lambda k: both[k]["transfer_s"])
    p = both[name]
    saved = p["scratch_s"] - p["transfer_s"]
    ratio = p["scratch_s"] / max(p["transfer_s"], 1e-9)
    verb = f"saved {duration(saved)} ({ratio:.1f}x faster)" if saved > 0 else f"took {duration(-saved)} longer"
    return {"sentence": f"Transfer ({name}) reached scratch's best validation score in {duration(p['transfer_s'])} "
                        f"against scratch's {duration(p['scratch_s'])} {where} (mean of {p['seeds']} seeds): "
                        f"it {verb}.",
            "strategy": name, "saved_s": saved, "speedup": ratio, "per_strategy": per}


def _labels_headline(summary: list[dict], transfer: list[str], budgets: list, label: str) -> dict[str, Any]:
    top = budgets[-1]
    ref = summary_cell(summary, top, "scratch")
    if ref is None:
        return {"sentence": "Scratch has no run at the largest budget, so there is nothing to match."}
    need = {}
    for name in transfer:
        for b in budgets:
            c = summary_cell(summary, b, name)
            if c is not None and c["score"] >= ref["score"]:
                need[name] = c
                break
    top_text = f"all {ref['labels_per_class']:.0f}" if top == ALL else f"{ref['labels_per_class']:.0f}"
    if not need:
        best = max((c for c in summary if c["strategy"] != "scratch" and c["budget"] == str(top)),
                   key=lambda c: c["score"], default=None)
        tail = f"; the best, {best['strategy']}, scored {best['score']:.3f}" if best else ""
        return {"sentence": f"No transfer strategy matched scratch's test {label} of {ref['score']:.3f} with "
                            f"{top_text} labels per class at any budget{tail}.", "scratch": ref["score"]}
    name = min(need, key=lambda k: (need[k]["labels_per_class"], -need[k]["score"]))
    c = need[name]
    fewer = ref["labels_per_class"] / c["labels_per_class"]
    if c["budget"] == str(top):
        return {"sentence": f"Transfer ({name}) matched scratch's test {label} "
                            f"({c['score']:.3f} vs {ref['score']:.3f}) only with {top_text} labels per class, "
                            "as many as scratch: no labels saved.",
                "strategy": name, "labels_per_class": c["labels_per_class"], "scratch_labels_per_class":
                ref["labels_per_class"], "fewer": 1.0, "scratch": ref["score"], "transfer": c["score"]}
    return {"sentence": f"Transfer ({name}) needed {c['labels_per_class']:.0f} labels per class to match scratch "
                        f"with {top_text} (test {label} {c['score']:.3f} vs {ref['score']:.3f}): "
                        f"{fewer:.1f}x fewer labels.",
            "strategy": name, "labels_per_class": c["labels_per_class"], "scratch_labels_per_class":
            ref["labels_per_class"], "fewer": fewer, "scratch": ref["score"], "transfer": c["score"]}


def gap_label(runs: list[dict]) -> str:
    """What the overfitting gap measures: accuracy, or macro-F1 for multi-label runs (exact match is too coarse)."""
    return metric_label(next((r["gap_metric"] for r in runs if r.get("gap_metric")), "accuracy"))


def _gap_headline(summary: list[dict], transfer: list[str], budgets: list, measure: str = "accuracy") -> dict[str, Any]:
    def mean_gap(name: str) -> float | None:
        # a model no better on its training data than on validation does not overfit: below zero counts as zero
        gaps = [max(c["gap"], 0.0) for c in summary if c["strategy"] == name and c["gap"] is not None
                and c["gap"] == c["gap"]]
        return float(np.mean(gaps)) if gaps else None

    scratch = mean_gap("scratch")
    gaps = {n: g for n in transfer if (g := mean_gap(n)) is not None}
    if scratch is None or not gaps:
        return {"sentence": "The train-validation gap could not be measured."}
    name = min(gaps, key=gaps.get)
    diff = scratch - gaps[name]
    what = (f"{diff:.3f} smaller" + (f" ({diff / scratch:.0%} less)" if gaps[name] >= 0 < scratch else "")) \
        if diff > 0 else f"{-diff:.3f} larger"
    return {"sentence": f"The overfitting gap (the kept model's {measure} on its training examples minus on "
                        f"validation, both read without augmentation; mean over {len(budgets)} budget(s) and the "
                        f"seeds) was {gaps[name]:.3f} with {name} against "
                        f"{scratch:.3f} from scratch: {what}.",
            "strategy": name, "transfer": gaps[name], "scratch": scratch, "reduction": diff}


def test_half_width(cell: dict, metric: str, test_n: int, runs: list[dict] | None = None) -> float | None:
    """Half the width of the test set's own 95% interval at a cell's score: Wilson for accuracy-like metrics
    (an approximation for macro-F1 and balanced accuracy), the runs' bootstrap intervals for AUROC."""
    from ..evaluation.clinical import wilson

    if metric == "auroc":
        cis = [r["test_auroc_ci"] for r in runs or [] if r["budget"] == cell["budget"] and
               r["strategy"] == cell["strategy"] and r.get("test_auroc_ci")]
        return float(np.mean([(hi - lo) / 2 for lo, hi in cis])) if cis else None
    lo, hi = wilson(round(cell["score"] * test_n), test_n)
    return (hi - lo) / 2


def resolution_warnings(summary: list[dict], strategies: list[str], budgets: list, metric: str,
                        test_n: int, runs: list[dict] | None = None) -> list[str]:
    """Where two strategies differ by less than the test set can resolve (:func:`test_half_width` at the better
    score), say so: that difference is not shown by this test set. Checked per budget for the two best
    strategies and for the best transfer strategy against scratch and against the classical baseline, the pairs
    the report and headlines compare."""
    out = []
    for b in budgets:
        cells = sorted((c for c in summary if c["budget"] == str(b)), key=lambda c: -c["score"])
        pairs = [(cells[0], cells[1])] if len(cells) > 1 else []
        transfer = next((c for c in cells if c["strategy"] not in ("scratch", CLASSICAL)), None)
        for other in ("scratch", CLASSICAL):  # the pairs the headlines compare: best transfer against each
            ref = next((c for c in cells if c["strategy"] == other), None)
            if ref is not None and transfer is not None:
                pair = (transfer, ref) if transfer["score"] >= ref["score"] else (ref, transfer)
                if pair not in pairs:
                    pairs.append(pair)
        for a, second in pairs:
            half = test_half_width(a, metric, test_n, runs)
            if half is not None and a["score"] - second["score"] < half:
                where = "with all labels" if b == ALL else f"with {b} labels per class"
                out.append(f"{where}, {a['strategy']} ({a['score']:.3f}) and {second['strategy']} "
                           f"({second['score']:.3f}) differ by less than the test set's 95% interval (+-{half:.3f} "
                           f"with {test_n} test examples): this test set cannot tell them apart")
    return out
