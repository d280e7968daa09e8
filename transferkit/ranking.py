"""``transferkit.rank``: which backbone suits your data, from frozen features, in seconds per backbone.

For each backbone the training and validation examples are read by the task with the backbone's own
preprocessing, their pooled features extracted once (and cached like the linear probe's), and every transferability
score of :mod:`transferkit.evaluation.transferability` computed; LEEP and NCE need the backbone's source classifier
(e.g. the ImageNet head of the packaged weights) and are left out for backbones without one. The ranking
follows LogME. :func:`transferkit.rank` with ``validate=True`` also fine-tunes each backbone briefly, and
:func:`agreement` (the weighted Kendall tau between each score and the fine-tuned validation score) says how far the
scores can be trusted on these data.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from .errors import TransferkitError

ORDER = ("logme", "leep", "nce", "hscore", "knn")


def score_backbones(data: Any, names: list[str], task: Any, settings: Any, options: Any) -> dict[str, Any]:
    """Score each backbone in ``names`` on ``data`` as ``task`` reads it (train and validation splits only, made
    as :func:`transferkit.fit` makes them from ``settings``) and rank them by LogME. Returns ``{"rows": [...],
    "ranking": [...], "ranked_by": "logme", "classes": [...]}``."""
    from .console import info
    from .engine.accel import make_accelerator
    from .engine.features import extract_features
    from .evaluation.transferability import SCORES

    if len(names) < 2:
        raise TransferkitError("Give at least two backbones to rank, e.g. efficientnet_lite0,efficientnet_lite1.")
    if len(set(names)) < len(names):
        raise TransferkitError(f"A backbone is listed twice in {', '.join(names)}: give each once.")
    accelerator = make_accelerator(settings.precision, seed=settings.seed)
    rows = []
    for name in names:
        t0 = time.monotonic()
        prepared = task.prepare(data, name, settings, options, parts=("train", "val"))
        bb, dec = prepared.backbone, prepared.encoded
        multi = dec["train"].targets.ndim == 2  # LogME regresses each label's 0/1 column; the others need one class
        parts = [part for part in ("train", "val") if part in dec]  # small data: no validation split, all is train
        feats = [extract_features(bb, dec[part], accelerator, description=f"features ({name}, {part})")[0]
                 for part in parts]
        X = np.concatenate([f.float().numpy() for f in feats])
        y = np.concatenate([dec[part].targets.numpy() for part in parts])
        t1 = time.monotonic()
        row: dict[str, Any] = {"backbone": name, "examples": len(y), "features": int(X.shape[1])}
        source = _source_probabilities(bb, X)
        for key in ORDER:
            if multi and key != "logme":
                row[key] = None
            elif key in ("leep", "nce"):
                row[key] = SCORES[key]().fit(source, y).score_ if source is not None else None
            else:
                row[key] = SCORES[key]().fit(X, y).score_
        row["features_s"] = round(t1 - t0, 2)
        row["scores_s"] = round(time.monotonic() - t1, 2)
        rows.append(row)
        knn = "" if row["knn"] is None else f", k-NN {row['knn']:.3f}"
        info(f"rank: {name}: LogME {row['logme']:.3f}{knn} ({row['features_s'] + row['scores_s']:.1f} s)")
    if multi:
        info("rank: multi-label data: LEEP, NCE, H-score and k-NN score one class per example and do not apply; "
             "ranked by LogME on each label's 0/1 column")
    ranking = [r["backbone"] for r in sorted(rows, key=lambda r: -r["logme"])]
    return {"rows": rows, "ranking": ranking, "ranked_by": "logme", "classes": prepared.classes,
            "multi_label": multi}


def _source_probabilities(bb: Any, features: np.ndarray) -> np.ndarray | None:
    """The source classifier's probabilities for pooled features, when the backbone kept its source head."""
    head = getattr(bb, "source_head", None)
    if head is None:
        return None
    import torch

    with torch.no_grad():
        logits = head(torch.from_numpy(features).float())
    return torch.softmax(logits.float(), dim=1).numpy()


def agreement(rows: list[dict], finetuned: dict[str, float], strategy: str) -> dict[str, Any]:
    """How far each score predicted the fine-tuned validation scores ``finetuned`` (backbone -> score): weighted
    Kendall tau (scipy's, hyperbolic weights: the top of the ranking counts most)."""
    from scipy.stats import weightedtau

    names = [r["backbone"] for r in rows]
    target = np.array([finetuned[n] for n in names])
    taus = {}
    for key in ORDER:
        values = [r[key] for r in rows]
        if any(v is None for v in values) or np.ptp(target) == 0:
            taus[key] = None
            continue
        taus[key] = float(weightedtau(np.asarray(values, dtype=float), target).statistic)
    return {"target": "fine-tuned validation score", "strategy": strategy, "weighted_kendall_tau": taus,
            "finetune_s": round(sum(r["finetune_s"] for r in rows), 1),
            "scores_s": round(sum(r["features_s"] + r["scores_s"] for r in rows), 1)}


def write(out: Path, result: dict[str, Any]) -> None:
    """``rank.json`` and ``rank.md`` in ``out``."""
    from .io import atomic_write_text, write_json

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "rank.json", result)
    atomic_write_text(out / "rank.md", render(result))


def render(result: dict[str, Any]) -> str:
    """The ranking as Markdown: one row per backbone, best LogME first."""

    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"

    rows = sorted(result["rows"], key=lambda r: -r["logme"])
    validated = "validation" in result
    head = ("| rank | backbone | LogME | LEEP | NCE | H-score | k-NN | seconds |"
            + (" fine-tuned val |" if validated else ""))
    lines = ["# Backbone ranking", "", f"Ranked by LogME on {rows[0]['examples']} labelled examples "
                                       "(train + validation).",
             "", head, "|" + "---|" * (8 + validated)]
    for i, r in enumerate(rows, 1):
        lines.append(f"| {i} | {r['backbone']} | {f(r['logme'])} | {f(r['leep'])} | {f(r['nce'])} | {f(r['hscore'])} | "
                     f"{f(r['knn'])} | {r['features_s'] + r['scores_s']:.1f} |" + (f" {f(r.get('finetuned_val'))} |"
                                                                                  if validated else ""))
    if validated:
        v = result["validation"]
        taus = ", ".join(f"{k} {f(t)}" for k, t in v["weighted_kendall_tau"].items())
        lines += ["", f"Weighted Kendall tau with the {v['target']} ({v['strategy']}): {taus}. Scoring took "
                  f"{v['scores_s']:.1f} s, fine-tuning {v['finetune_s']:.1f} s."]
    if result.get("multi_label"):
        lines += ["", "Multi-label data: LEEP, NCE, H-score and k-NN score one class per example and do not apply; "
                      "LogME regresses each label's 0/1 column."]
    lines.append("")
    return "\n".join(lines)
