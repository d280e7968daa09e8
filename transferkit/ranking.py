"""``transferkit.rank``: which backbone suits your data, from frozen features, in seconds per backbone.

For each backbone the training and validation examples are read with its own preprocessing, their pooled
features extracted once (and cached like the linear probe's), and every transferability score of
:mod:`transferkit.evaluation.transferability` computed; LEEP and NCE need the backbone's source classifier
(e.g. the ImageNet head of the packaged weights) and are left out for backbones without one. The ranking
follows LogME. With ``validate=True`` each backbone is also fine-tuned briefly and the weighted Kendall tau
between each score and the fine-tuned validation score says how far the scores can be trusted on these data.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from .errors import TransferkitError

ORDER = ("logme", "leep", "nce", "hscore", "knn")


def rank(data: Any, backbones: list[str], *, validate: bool = False, strategy: str = "finetune",
         budget: str | float | None = None, out: str | Path | None = None, seed: int = 0, skip_bad: bool = False,
         image_size: int | None = None, precision: str = "auto", val_fraction: float = 0.15,
         test_fraction: float = 0.2, modality: str = "auto", labels: list[Any] | None = None,
         text_options: Any = None, max_length: int | None = None, clip_seconds: float | None = None,
         window: str | None = None, slices: str | None = None, patient_column: str | None = None,
         arch: str | None = None, **validate_options: Any) -> dict[str, Any]:
    """Score each of ``backbones`` on ``data`` (any classification data :func:`transferkit.fit` takes) and rank
    them by LogME. Returns ``{"rows": [...], "ranking": [...], "validation": {...}}`` and, with ``out``, writes
    ``rank.json`` and ``rank.md`` there. Only the training and validation splits are read (split as
    :func:`transferkit.fit` splits them with the same ``seed`` and fractions), so the scores never see the test
    set (``validate=True`` trains with :func:`transferkit.fit`, which also reports its test score); the loader
    options (``modality``, ``text_options``, ``window``, ``arch`` ...) mean what they mean for ``fit``.

    ``validate=True`` fine-tunes every backbone (``strategy``, ``budget`` per backbone, ``validate_options`` such
    as ``epochs=3``) and reports each score's weighted Kendall tau with the fine-tuned validation score.
    """
    from .api import _prepare_audio, _prepare_images, _prepare_texts, backbone_names, parse_budget
    from .console import info
    from .data.sources import detect_kind
    from .data.text import TextOptions, is_text_source
    from .engine.accel import make_accelerator
    from .engine.features import extract_features
    from .evaluation.transferability import SCORES

    names = backbone_names(backbones)
    if len(names) < 2:
        raise TransferkitError("Give at least two backbones to rank, e.g. efficientnet_lite0,efficientnet_lite1.")
    if len(set(names)) < len(names):
        raise TransferkitError(f"A backbone is listed twice in {', '.join(names)}: give each once.")
    opts = text_options or TextOptions(skip_bad=skip_bad)
    kind = modality if modality != "auto" else \
        "text" if labels is not None or is_text_source(data, opts) else detect_kind(data)
    accelerator = make_accelerator(precision, seed=seed)
    rows = []
    for name in names:
        t0 = time.monotonic()
        if kind == "text":
            splits, bb, dec, _ = _prepare_texts(data, name, arch, labels, opts, max_length, image_size, val_fraction,
                                                test_fraction, seed, parts=("train", "val"))
        elif kind == "audio":
            splits, bb, dec, _ = _prepare_audio(data, name, arch, clip_seconds, max_length, image_size, skip_bad,
                                                val_fraction, test_fraction, seed, parts=("train", "val"))
        else:
            splits, bb, dec, _ = _prepare_images(data, name, arch, max_length, image_size, skip_bad, val_fraction,
                                                 test_fraction, seed, window=window, slices=slices,
                                                 patients=kind == "medical", patient_column=patient_column,
                                                 parts=("train", "val"))
        if dec["train"].targets.ndim == 2:
            raise TransferkitError("rank scores single-label data; these labels are multi-label.")
        parts = [part for part in ("train", "val") if part in dec]  # small data: no validation split, all is train
        feats = [extract_features(bb, dec[part], accelerator, description=f"features ({name}, {part})")[0]
                 for part in parts]
        X = np.concatenate([f.float().numpy() for f in feats])
        y = np.concatenate([dec[part].targets.numpy() for part in parts])
        t1 = time.monotonic()
        row: dict[str, Any] = {"backbone": name, "examples": len(y), "features": int(X.shape[1])}
        source = _source_probabilities(bb, X)
        for key in ORDER:
            if key in ("leep", "nce"):
                row[key] = SCORES[key]().fit(source, y).score_ if source is not None else None
            else:
                row[key] = SCORES[key]().fit(X, y).score_
        row["features_s"] = round(t1 - t0, 2)
        row["scores_s"] = round(time.monotonic() - t1, 2)
        rows.append(row)
        info(f"rank: {name}: LogME {row['logme']:.3f}, k-NN {row['knn']:.3f} ({row['features_s'] + row['scores_s']:.1f} s)")
    ranking = [r["backbone"] for r in sorted(rows, key=lambda r: -r["logme"])]
    result: dict[str, Any] = {"rows": rows, "ranking": ranking, "ranked_by": "logme", "classes": splits.classes}
    if validate:
        same = {"val_fraction": val_fraction, "test_fraction": test_fraction, "modality": kind, "arch": arch,
                "labels": labels, "max_length": max_length, "clip_seconds": clip_seconds, "window": window,
                "slices": slices, "patient_column": patient_column}
        if kind == "text" and text_options is not None:
            same |= {"text_column": opts.text_column, "label_column": opts.label_column, "label_sep": opts.label_sep,
                     "encoding": opts.encoding}
        # fine-tuned on the very splits the scores were computed on
        same = {k: v for k, v in same.items() if v is not None}
        result["validation"] = _validate(data, names, rows, strategy, parse_budget(budget), seed, skip_bad,
                                         image_size, precision, {**same, **validate_options})
    if out is not None:
        _write(Path(out), result)
    return result


def _source_probabilities(bb: Any, features: np.ndarray) -> np.ndarray | None:
    """The source classifier's probabilities for pooled features, when the backbone kept its source head."""
    head = getattr(bb, "source_head", None)
    if head is None:
        return None
    import torch

    with torch.no_grad():
        logits = head(torch.from_numpy(features).float())
    return torch.softmax(logits.float(), dim=1).numpy()


def _validate(data: Any, names: list[str], rows: list[dict], strategy: str, budget_s: float | None, seed: int,
              skip_bad: bool, image_size: int | None, precision: str, options: dict) -> dict[str, Any]:
    """Fine-tune each backbone; weighted Kendall tau (scipy's, hyperbolic weights: the top of the ranking counts
    most) between each score and the fine-tuned validation score."""
    from scipy.stats import weightedtau

    from .api import fit

    scored = {}
    for name, row in zip(names, rows, strict=True):
        t = time.monotonic()
        model = fit(data, backbone=name, strategy=strategy, budget=budget_s, seed=seed, skip_bad=skip_bad,
                    image_size=image_size, precision=precision, **options)
        best = model.metrics["history"]["epochs"][model.metrics["history"]["best_epoch"]]
        # small data: no validation split, so the cross-validated (out-of-fold) score stands in
        val = best["val_acc"] if best["val_acc"] is not None else model.metrics["val"]["accuracy"]
        row["finetuned_val"] = val
        row["finetuned_test"] = (model.metrics.get("test") or {}).get("accuracy")
        row["finetune_s"] = round(time.monotonic() - t, 1)
        scored[name] = val
    target = np.array([scored[n] for n in names])
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


def _write(out: Path, result: dict[str, Any]) -> None:
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
    head = "| rank | backbone | LogME | LEEP | NCE | H-score | k-NN | seconds |" + (" fine-tuned val |" if validated else "")
    lines = ["# Backbone ranking", "", f"Ranked by LogME on {rows[0]['examples']} labelled examples (train + validation).",
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
    lines.append("")
    return "\n".join(lines)
