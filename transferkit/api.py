"""``transferkit.fit``: the whole run, top to bottom.

data -> backbone -> strategy (head + what trains) -> engine -> evaluation/report -> bundle
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import Any

from .backbones.registry import DEFAULT_BACKBONE
from .bundle.model import TransferModel
from .errors import TransferkitError


def parse_budget(budget: str | float | int | None) -> float | None:
    """``"10m"``, ``"90s"``, ``"1h"``, ``"1h30m"`` or seconds -> seconds; ``None`` means no budget."""
    if budget is None or budget == "":
        return None
    if isinstance(budget, (int, float)):
        return float(budget)
    text = str(budget).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", text)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != text.replace(" ", ""):
        raise TransferkitError(f"Budget {budget!r} is not a duration: write e.g. 90s, 10m or 1h30m.")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def fit(
    data: Any,
    *,
    backbone: str = DEFAULT_BACKBONE,
    strategy: str = "auto",
    out: str | Path | None = None,
    budget: str | float | None = None,
    seed: int = 0,
    skip_bad: bool = False,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    precision: str = "auto",
    arch: str | None = None,
    cpu: bool | None = None,
    resume: bool = False,
    image_size: int | None = None,
    **strategy_options: Any,
) -> TransferModel:
    """Adapt a pretrained backbone to labelled images and return the trained :class:`TransferModel`.

    ``data`` is a folder of class folders (optionally split into ``train/``, ``val/``, ``test/``), a
    CSV/TSV/JSONL file with ``path`` and ``label`` columns, or a :class:`transferkit.data.ImageSet`.
    ``strategy`` is ``linear``, ``finetune``, ``gradual``, ``scratch`` or ``auto``; extra keyword arguments
    set that strategy's options (e.g. ``epochs=5``). ``resume=True`` continues an interrupted run in ``out``
from its last epoch checkpoint. With ``out``, the run folder receives ``model/``
    (the bundle), ``metrics.json``, ``confusion_matrix.png``, ``learning_curve.png`` and ``report.md``.

    Example::

        >>> model = transferkit.fit("data/parts", backbone="efficientnet_lite0", strategy="auto", budget="10m")
        >>> model.predict(["part.jpg"])[0]["label"]

    Raises :class:`transferkit.TransferkitError` (one line naming the file or value) for bad input.
    """
    from .backbones.registry import create_backbone
    from .console import info
    from .data.images import decode
    from .data.sources import load_splits
    from .engine.accel import make_accelerator
    from .evaluation.metrics import classification_metrics
    from .evaluation.report import train_val_gap, write_run_report
    from .strategies import TrainTask, create_strategy

    t_start = time.monotonic()
    seconds = parse_budget(budget)
    deadline = t_start + seconds if seconds is not None else None
    strat = create_strategy(strategy, **strategy_options)  # validate options before any heavy work
    timings: dict[str, float] = {}

    t = time.monotonic()
    splits = load_splits(data, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, skip_bad=skip_bad)
    bb = create_backbone(backbone, arch=arch)
    if image_size is not None:
        if image_size < 32:
            raise TransferkitError(f"Image size {image_size} is too small: use 32 pixels or more.")
        # the backbone's mean/std/interpolation stay; only the resolution changes (and is saved in the bundle)
        bb.preprocess = dataclasses.replace(bb.preprocess, input_size=(image_size, image_size))
    timings["load_s"] = time.monotonic() - t
    info(f"data: {len(splits.train)} train / {len(splits.val)} val / {len(splits.test) if splits.test else 0} test, "
         f"{len(splits.classes)} classes; backbone {bb.spec.name} ({bb.num_features}-d features, {bb.preprocess.input_size[0]} px)")

    t = time.monotonic()
    dec = {name: decode(ds, bb.preprocess, splits.classes, skip_bad=skip_bad, description=f"decoding {name}")
           for name, ds in (("train", splits.train), ("val", splits.val), ("test", splits.test)) if ds is not None}
    timings["decode_s"] = time.monotonic() - t

    accelerator = make_accelerator(precision, seed=seed, cpu=cpu)
    work_dir = Path(out) / ".work" if out else None
    if work_dir is not None and not resume and accelerator.is_main_process:
        import shutil

        shutil.rmtree(work_dir, ignore_errors=True)  # a fresh run never picks up an older run's checkpoints
    task = TrainTask(spec=bb.spec, backbone=bb, train=dec["train"], val=dec["val"], classes=splits.classes,
                     accelerator=accelerator, seed=seed, deadline=deadline, work_dir=work_dir)
    result = strat.fit(task)
    timings.update(result.timings)

    t = time.monotonic()
    model = TransferModel(result.model.cpu().eval(), splits.classes)
    scores = {name: classification_metrics(d.targets.numpy(), model.predict_pixels(d.pixels, precision=precision), splits.classes)
              for name, d in dec.items() if name in ("val", "test")}
    timings["evaluate_s"] = time.monotonic() - t
    timings["total_s"] = time.monotonic() - t_start

    history = result.history.to_dict()
    metrics = {
        "task": "image-classification",
        "strategy": result.strategy,
        "backbone": {**bb.spec.to_dict(), "input_size": list(bb.preprocess.input_size), "num_features": bb.num_features},
        "data": {**splits.summary(), "skipped": sum(len(d.skipped) for d in dec.values())},
        "val": scores["val"],
        "test": scores.get("test"),
        "history": history,
        "train_val_gap": train_val_gap(history),
        "trainable_params": result.trainable_params,
        "precision": str(accelerator.mixed_precision),
        "processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "seed": seed,
        "budget_s": seconds,
        "timings": timings,
        "details": result.details,
    }
    model.meta = {"metrics": {k: metrics[k] for k in ("strategy", "val", "test", "train_val_gap", "trainable_params", "data")}}
    if out is not None and accelerator.is_main_process:  # under `accelerate launch`, only rank 0 writes
        out = Path(out)
        model.save(out / "model")
        files = write_run_report(out, metrics, splits.classes)
        if work_dir is not None:
            import shutil

            shutil.rmtree(work_dir, ignore_errors=True)  # checkpoints served resume; the bundle is the result
        info(f"report: {files['report']}")
    model.metrics = metrics
    return model
