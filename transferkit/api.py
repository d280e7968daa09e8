"""``transferkit.fit``: the whole run, top to bottom.

data -> backbone -> strategy (head + what trains) -> engine -> evaluation/report -> bundle
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .bundle.model import TransferModel
from .data.sources import DEFAULT_TEST_FRACTION, DEFAULT_VAL_FRACTION
from .errors import TransferkitError

if TYPE_CHECKING:
    from .bundle.detection import DetectionModel


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
    backbone: str | list[str] | None = None,
    strategy: str = "auto",
    out: str | Path | None = None,
    budget: str | float | None = None,
    seed: int = 0,
    skip_bad: bool = False,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
    cv: int | None = None,
    precision: str = "auto",
    arch: str | None = None,
    cpu: bool | None = None,
    resume: bool = False,
    image_size: int | None = None,
    labels: list[Any] | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    label_sep: str | None = None,
    encoding: str = "utf-8",
    max_length: int | None = None,
    clip_seconds: float | None = None,
    task: str = "auto",
    modality: str = "auto",
    window: str | None = None,
    slices: str | None = None,
    patient_column: str | None = None,
    positive: str | None = None,
    threshold: str | float | None = None,
    balance: str | None = None,
    scratch_baseline: bool = False,
    **strategy_options: Any,
) -> TransferModel | DetectionModel:
    """Adapt a pretrained backbone to labelled images, texts or audio and return the trained :class:`TransferModel`.

    Images: ``data`` is a folder of class folders (optionally split into ``train/``, ``val/``, ``test/``), a
    CSV/TSV/JSONL file with ``path`` and ``label`` columns, or a :class:`transferkit.data.ImageSet`.
    Texts: a folder of class folders of ``.txt`` files, a CSV/TSV/JSONL with text and label columns (named by
    ``text_column``/``label_column`` or guessed), a pandas DataFrame, a Hugging Face dataset (or the folder it
    was saved to), or a list of strings with ``labels=[...]``. List-valued labels, or ``label_sep="|"`` in a
    CSV, make it multi-label. Texts default to the offline ``all-MiniLM-L6-v2`` encoder, images to
    ``efficientnet_lite0``; ``max_length`` overrides the encoder's token limit, ``image_size`` its resolution.
    Audio: a folder of class folders of wav/flac/ogg (mp3 where libsndfile decodes it), a CSV/JSONL of
    ``path,label``, or an :class:`transferkit.data.AudioSet`; ``efficientnet_lite0`` on log-mel spectrograms by
    default, ``backbone="speaker-encoder"`` for voices. Recordings are cut into windows of ``clip_seconds``
    (default: from the training durations) whose outputs are averaged per recording.

    Medical images (``modality="medical"``, or automatically for DICOM/NIfTI files or a manifest with a
    ``patient_id`` column): DICOM, NIfTI and 16-bit PNG/TIFF become 8-bit through ``window`` (``auto``, a CT preset
    such as ``lung``, or ``"centre,width"``; see :mod:`transferkit.data.medical`), volumes through ``slices``
    (``2d`` or ``2.5d``). Splits are patient-level (``patient_column``, or the DICOM PatientID, hashed); the loss
    is class-weighted (``balance``: ``weights``, ``sampler`` or ``none``) and epochs are chosen by balanced
    accuracy. With at least 20 validation examples of each class the model's probabilities are calibrated (the
    class weights' shift undone, then temperature scaling on validation), and a binary
    model decides at ``threshold`` on the ``positive`` class's probability (``youden`` by default, tuned on
    validation; or ``sensitivity=0.95``, ``specificity=0.9``, or a number). The report adds AUROC, sensitivity,
    specificity, PPV/NPV with 95% intervals, balanced accuracy, calibration error and ``roc.png``.

    Detection (``task="detect"``, or automatically when the data carry boxes): a COCO JSON file or folder, a YOLO
    folder (``images/`` + ``labels/`` + ``data.yaml``) or a Pascal VOC folder (``Annotations/`` + ``JPEGImages/``);
    an FCOS detector on the backbone's feature maps, returned as a
    :class:`~transferkit.bundle.detection.DetectionModel`; ``image_size`` is the longer image side.

    Splits: a given ``test/`` folder, ``split`` column or dataset split is always honoured. Otherwise small data
    (fewer than 50 examples, or patients, in the smallest class) hold nothing out by default: settings (the probe's
    C, epochs, ``auto``'s choice, a medical threshold) are chosen by stratified ``cv``-fold cross-validation (default:
    5 folds for the linear probe, 3 where each fold is a training run), the
    score is reported as a cross-validated estimate with its interval, and the final model trains on every label.
    ``val_fraction`` / ``test_fraction`` hold out splits anyway (larger data: 0.15 and 0.2 by default).
    ``transferkit evaluate`` on a separate test set stays the final word.

    Several backbones (a list, or ``"a,b,c"``): each is scored on the training and validation data by
    :func:`transferkit.rank` (LogME on frozen features, seconds per backbone) and the best-ranked one is trained
    (``budget`` then counts from the end of the ranking);
    the ranking is kept in the metrics, the report and the model card. ``scratch_baseline=True`` also trains the
    same architecture from random weights on the same splits and budget, and scores it on the same test set:
    the report and the model card then show the comparison with scratch.

    ``strategy`` is ``linear``, ``finetune``, ``gradual``, ``scratch``, ``auto``, and for texts also ``lora``
    and ``contrastive`` (detection: ``frozen``, ``finetune``, ``gradual``, ``scratch``, ``auto``); extra keyword
    arguments set that strategy's options (e.g. ``epochs=5``). ``task`` is ``auto``, ``classify`` or ``detect``.
    ``resume=True`` continues an interrupted run in ``out`` from its last epoch checkpoint. With ``out``, the
    run folder receives ``model/`` (the bundle), ``metrics.json``, plots and ``report.md``.

    Example::

        >>> model = transferkit.fit("data/parts", backbone="efficientnet_lite0", strategy="auto", budget="10m")
        >>> model.predict(["part.jpg"])[0]["label"]
        >>> news = transferkit.fit(df, text_column="body", label_column="topic", strategy="lora", out="runs/news")
        >>> news.predict(["Shares rose after the merger."])[0]["label"]

    Raises :class:`transferkit.TransferkitError` (one line naming the file or value) for bad input.
    """
    from .backbones.audio import describe as describe_audio
    from .console import info
    from .data.sources import detect_kind
    from .data.text import TextOptions, is_text_source
    from .engine.accel import make_accelerator
    from .evaluation.metrics import classification_metrics, confidently_wrong, multilabel_metrics
    from .evaluation.report import train_val_gap, write_run_report
    from .strategies import TrainTask, create_strategy

    t_start = time.monotonic()
    seconds = parse_budget(budget)
    names = backbone_names(backbone)
    several = names if len(set(names)) > 1 else None
    if several is None and (isinstance(backbone, (list, tuple)) or (isinstance(backbone, str) and "," in backbone)):
        backbone = names[0] if names else None  # one name written as "a,", "a,a" or ["a"]
    deadline = t_start + seconds if seconds is not None else None
    if cv is not None and (not isinstance(cv, int) or isinstance(cv, bool) or cv < 2):
        raise TransferkitError(f"cv {cv!r} is not a number of folds: use 2 or more (5 is usual).")
    if task not in ("auto", "classify", "detect"):
        raise TransferkitError(f"Task {task!r} is unknown: choose auto, classify or detect.")
    if task == "detect" or (task == "auto" and labels is None and _has_boxes(data)):
        from .detect import fit_detector

        if several or scratch_baseline:
            raise TransferkitError("Detection takes one backbone and no scratch_baseline: compare detectors with "
                                   "--strategy scratch in a second run.")

        for name, value in (("labels", labels), ("text_column", text_column), ("label_column", label_column),
                            ("label_sep", label_sep), ("max_length", max_length), ("clip_seconds", clip_seconds)):
            if value is not None:
                raise TransferkitError(f"{name} does not apply to detection: leave it out.")
        return fit_detector(data, backbone=backbone, arch=arch, strategy=strategy, out=out, deadline=deadline,
                            budget_s=seconds, seed=seed, skip_bad=skip_bad,
                            val_fraction=DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction,
                            test_fraction=DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction,
                            precision=precision, cpu=cpu, resume=resume,
                            image_size=image_size, strategy_options=strategy_options, t_start=t_start)
    text_opts = TextOptions(text_column, label_column, label_sep, encoding, skip_bad)
    if modality not in ("auto", "image", "text", "audio", "medical"):
        raise TransferkitError(f"Modality {modality!r} is unknown: choose auto, image, text, audio or medical.")
    if modality == "auto":
        modality = "text" if labels is not None or is_text_source(data, text_opts) else detect_kind(data)
    medical = modality == "medical"
    modality = "image" if medical else modality  # medical images run through the image backbone and strategies
    create_strategy(strategy, modality, **strategy_options)  # validate the options before any heavy work
    if clip_seconds is not None and modality != "audio":
        raise TransferkitError(f"clip_seconds applies to audio; these data are {modality}.")
    medical_opts = {"patient_column": patient_column, "positive": positive, "threshold": threshold, "balance": balance}
    for name, value in medical_opts.items():
        if value is not None and not medical:
            raise TransferkitError(f"{name} applies to medical images (modality='medical'); these data are {modality}.")
    if (window is not None or slices is not None) and modality != "image":
        raise TransferkitError(f"window and slices apply to images (DICOM, NIfTI, 16-bit PNG/TIFF); these data are "
                               f"{modality}.")
    if medical:
        from .evaluation.clinical import parse_threshold_rule

        parse_threshold_rule(threshold)
        if balance not in (None, "weights", "sampler", "none"):
            raise TransferkitError(f"Balance {balance!r} is unknown: choose weights, sampler or none.")
    timings: dict[str, float] = {}
    ranking = None
    if several:  # the backbone that ranks first on these data (train + validation only: the test set stays unseen)
        from .ranking import rank

        t = time.monotonic()
        ranking = rank(data, several, seed=seed, skip_bad=skip_bad, image_size=image_size, precision=precision, arch=arch,
                       val_fraction=val_fraction, test_fraction=test_fraction, modality="medical" if medical else modality,
                       labels=labels, text_options=text_opts, max_length=max_length, clip_seconds=clip_seconds,
                       window=window, slices=slices, patient_column=patient_column)
        backbone = ranking["ranking"][0]
        timings["rank_s"] = time.monotonic() - t
        if seconds is not None:  # the budget is for training the chosen backbone; ranking comes on top
            deadline = time.monotonic() + seconds
        info(f"backbone: {backbone} ranks first of {len(several)} by LogME")

    t = time.monotonic()
    if modality == "text":
        splits, bb, dec, load_s = _prepare_texts(data, backbone, arch, labels, text_opts, max_length, image_size,
                                                 val_fraction, test_fraction, seed)
    elif modality == "audio":
        splits, bb, dec, load_s = _prepare_audio(data, backbone, arch, clip_seconds, max_length, image_size, skip_bad,
                                                 val_fraction, test_fraction, seed)
    else:
        splits, bb, dec, load_s = _prepare_images(data, backbone, arch, max_length, image_size, skip_bad,
                                                  val_fraction, test_fraction, seed, window=window, slices=slices,
                                                  patients=medical, patient_column=patient_column)
    timings["load_s"] = load_s
    timings["tokenize_s" if modality == "text" else "decode_s"] = time.monotonic() - t - load_s
    if medical:  # before any training: a wrong class name or option must not cost the whole run
        from .evaluation.clinical import choose_positive

        choose_positive(splits.classes, splits.train.counts(), positive)
        if threshold is not None and len(splits.classes) != 2:
            raise TransferkitError(f"threshold applies to two classes (a finding and its absence); these data have "
                                   f"{len(splits.classes)}.")
    # the backbone's own defaults (e.g. the speaker encoder's learning rates), then the user's options
    strat = create_strategy(strategy, modality, getattr(bb, "profile", modality), **strategy_options)
    multi_label = dec["train"].targets.ndim == 2

    accelerator = make_accelerator(precision, seed=seed, cpu=cpu)
    work_dir = Path(out) / ".work" if out else None
    if work_dir is not None and not resume and accelerator.is_main_process:
        import shutil

        shutil.rmtree(work_dir, ignore_errors=True)  # a fresh run never picks up an older run's checkpoints
    groups = getattr(splits.train, "groups", None)
    task = TrainTask(spec=bb.spec, backbone=bb, train=dec["train"], val=dec.get("val"), classes=splits.classes,
                     accelerator=accelerator, seed=seed, deadline=deadline, work_dir=work_dir,
                     balance=(balance or "weights") if medical else "none", balanced=medical, cv=cv,
                     groups=[groups[i] for i in _kept(dec["train"])] if groups is not None else None)
    wall_start, train_t0 = time.time(), time.monotonic()  # time-to-accuracy counts from here (probe features included)
    result = strat.fit(task)
    timings.update(result.timings)
    baseline_model = None
    if scratch_baseline and not result.strategy.startswith("scratch"):
        t = time.monotonic()
        # the same training time the strategy had (its budget less the loading before training)
        base_task = dataclasses.replace(task, deadline=time.monotonic() + (deadline - train_t0) if deadline else None,
                                        work_dir=work_dir / "scratch" if work_dir is not None else None)
        epochs = {"epochs": strategy_options["epochs"]} if "epochs" in strategy_options else {}
        base = create_strategy("scratch", modality, getattr(bb, "profile", modality), **epochs).fit(base_task)
        baseline_model = TransferModel(base.model.cpu().eval(), splits.classes, multi_label=multi_label)
        baseline_model.meta["history"] = base.history.to_dict()
        baseline_model.meta["cv_probs"] = base.cv.probs if base.cv is not None else None
        timings["scratch_baseline_s"] = time.monotonic() - t

    t = time.monotonic()
    model = TransferModel(result.model.cpu().eval(), splits.classes, multi_label=multi_label, files=result.files)
    probs = {name: model.predict_encoded(d, precision=precision) for name, d in dec.items() if name in ("val", "test")}
    targets = {name: dec[name].targets.numpy() for name in probs}
    # what each scored set's rows are (the cross-validated estimate scores the training examples)
    scored_data, scored_source = {n: dec[n] for n in probs}, {n: getattr(splits, n) for n in probs}
    if result.cv is not None:  # no validation split: the out-of-fold predictions stand where validation would
        probs["val"], targets["val"] = result.cv.probs.astype(np.float32), dec["train"].targets.numpy()
        scored_data["val"], scored_source["val"] = dec["train"], splits.train
    scored = "test" if "test" in probs else "val"
    clinical = None
    if medical:  # calibrate and choose the operating threshold on validation (or out of fold); the model then uses both
        clinical, uncalibrated = _clinical(model, probs, targets, dec, splits, positive, threshold, task.balance,
                                           out_of_fold=result.cv is not None)
        probs = {name: model.calibrated(p) for name, p in probs.items()}
    if multi_label:
        scores = {name: multilabel_metrics(targets[name], p, splits.classes) for name, p in probs.items()}
    else:
        scores = {name: classification_metrics(targets[name], p, splits.classes, model.decide(p))
                  for name, p in probs.items()}
    if clinical is not None:
        from .evaluation.clinical import clinical_metrics

        for name, p in probs.items():
            scores[name]["clinical"] = clinical_metrics(targets[name], p, splits.classes, model.clinical["positive"],
                                                        model.clinical["threshold"], seed=seed)
    baseline = None
    if baseline_model is not None:
        cv_scored = scored == "val" and result.cv is not None
        base_probs = baseline_model.meta["cv_probs"] if cv_scored else \
            baseline_model.predict_encoded(dec[scored], precision=precision)
        if base_probs is None:  # cannot happen: the baseline cross-validates whenever the model did
            raise TransferkitError("the scratch baseline has no cross-validated predictions to compare with")
        baseline = _scratch_comparison(baseline_model, base_probs, targets[scored], scores[scored], scored,
                                       splits.classes, multi_label, timings["scratch_baseline_s"],
                                       clinical is not None and len(splits.classes) == 2)
    classical = None
    if scratch_baseline:  # the non-deep baseline beside scratch: seconds, and sometimes the honest winner
        tc = time.monotonic()
        classical = _classical_comparison("image" if medical else modality, dec, task, result.cv is not None and
                                          scored == "val", scored, targets[scored], scores[scored], splits.classes,
                                          multi_label, clinical is not None and len(splits.classes) == 2, seed)
        timings["classical_baseline_s"] = classical["seconds"] = round(time.monotonic() - tc, 1)
    timings["evaluate_s"] = time.monotonic() - t
    timings["total_s"] = time.monotonic() - t_start

    history = result.history.to_dict()
    gap = train_val_gap(history, scores["val"] if result.cv is not None else None)
    for e in history["epochs"]:  # seconds since training began (time-to-accuracy); None for epochs before a resume
        done = e.pop("finished_at", 0.0) - wall_start
        e["elapsed_s"] = round(done, 2) if done >= 0 else None
    data_summary = splits.summary()
    if modality == "text":
        data_summary |= {"multi_label": multi_label, "max_length": bb.preprocess.max_length,
                         "truncated": {name: d.truncated for name, d in dec.items()}}
    else:
        data_summary["skipped"] = sum(len(d.skipped) for d in dec.values())
    if modality == "audio":
        data_summary["audio"] = {name: d.info for name, d in dec.items()}
    metrics = {
        "task": "medical-classification" if medical else f"{modality}-classification",
        "strategy": result.strategy,
        "backbone": {**bb.spec.to_dict(), "preprocess": bb.preprocess.to_dict(), "num_features": bb.num_features,
                     **({"input_size": list(bb.preprocess.input_size)} if modality == "image" else {}),
                     **({"input": describe_audio(bb.preprocess)} if modality == "audio" else {})},
        "data": data_summary,
        "val": scores["val"],
        "test": scores.get("test"),
        "estimate": _estimate(result.cv, scores["val"], multi_label, medical) if result.cv is not None else None,
        "confidently_wrong": confidently_wrong(targets[scored], probs[scored], splits.classes,
                                               _names(scored_data[scored], scored_source[scored]),
                                               getattr(scored_data[scored], "texts", None),
                                               y_pred=None if multi_label else model.decide(probs[scored])),
        "history": history,
        "train_val_gap": gap,
        "trainable_params": result.trainable_params,
        "precision": str(accelerator.mixed_precision),
        "processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "seed": seed,
        "budget_s": seconds,
        "timings": timings,
        "details": result.details,
    }
    if clinical is not None:
        metrics["clinical"] = clinical
    if ranking is not None:
        metrics["backbone_ranking"] = {"ranked_by": ranking["ranked_by"], "chosen": backbone,
                                       "rows": [{k: r[k] for k in ("backbone", "logme", "leep", "nce", "hscore", "knn")}
                                                for r in ranking["rows"]]}
    if baseline is not None:
        metrics["scratch_baseline"] = baseline
    if classical is not None:
        metrics["classical_baseline"] = classical
    model.meta = {"metrics": {k: metrics[k] for k in ("strategy", "val", "test", "estimate", "train_val_gap",
                                                      "trainable_params", "data", "backbone_ranking",
                                                      "scratch_baseline", "classical_baseline")
                                if metrics.get(k) is not None}}
    if model.clinical is not None:
        model.meta["clinical"] = model.clinical
    if label_sep is not None:
        model.meta["label_sep"] = label_sep  # evaluate() reads multi-label cells the same way
    if out is not None and accelerator.is_main_process:  # under `accelerate launch`, only rank 0 writes
        out = Path(out)
        model.save(out / "model")
        files = write_run_report(out, metrics, splits.classes)
        if clinical is not None:
            from .evaluation.clinical import roc_png

            roc_png(targets[scored], probs[scored], splits.classes, model.clinical["positive"],
                    model.clinical["threshold"], out / "roc.png", uncalibrated[scored],
                    f"ROC ({'cross-validated' if scored == 'val' and result.cv else scored}, n={len(targets[scored])})")
        if work_dir is not None:
            import shutil

            shutil.rmtree(work_dir, ignore_errors=True)  # checkpoints served resume; the bundle is the result
        info(f"report: {files['report']}")
    model.metrics = metrics
    return model


def backbone_names(backbone: Any) -> list[str]:
    """A name, comma-separated names or a list of names -> the names, stripped, in order ([] for anything else,
    such as None or a BackboneSpec)."""
    if isinstance(backbone, str):
        backbone = backbone.split(",")
    if not isinstance(backbone, (list, tuple)):
        return []
    return [str(b).strip() for b in backbone if b is not None and str(b).strip()]


def _scratch_comparison(baseline: TransferModel, probs: np.ndarray, y: np.ndarray, scored_metrics: dict, part: str,
                        classes: list[str], multi_label: bool, seconds: float, binary_medical: bool) -> dict[str, Any]:
    """The scratch baseline scored on the same set as the model: its scores, and the model's lead over it.

    Accuracy (micro-F1 for multi-label) is compared; for two-class medical data AUROC, which needs no threshold
    (the model's threshold and calibration were tuned for it, the baseline's were not). ``resolved`` says whether
    the lead is larger than half the test set's 95% interval."""
    from .evaluation.metrics import classification_metrics, multilabel_metrics
    from .evaluation.report import train_val_gap

    m = multilabel_metrics(y, probs, classes) if multi_label else classification_metrics(y, probs, classes)
    key = "micro_f1" if multi_label else "accuracy"
    score, model_score, ci = m[key], scored_metrics[key], m.get(f"{key}_ci")
    model_ci = scored_metrics.get(f"{key}_ci")
    if binary_medical:
        from .evaluation.clinical import auroc

        c = scored_metrics["clinical"]
        k = classes.index(c["positive"])
        key, score, model_score, ci, model_ci = "auroc", auroc(y == k, probs[:, k]), c["auroc"], None, c.get("auroc_ci")
    history = baseline.meta["history"]
    lead = model_score - score if score is not None and model_score is not None else None
    half = (model_ci[1] - model_ci[0]) / 2 if model_ci else None
    return {"set": part, "metric": key, "score": score, "score_ci": ci, "macro_f1": m["macro_f1"],
            "model_score": model_score, "lead": lead, "resolved": None if lead is None or half is None else abs(lead) > half,
            "half_width": half, "seconds": round(seconds, 1), "epochs": len(history["epochs"]),
            "stopped": history["stopped"],
            # a cross-validated baseline's final run has no validation scores: its out-of-fold ones stand in
            "train_val_gap": train_val_gap(history, m if history["epochs"][history["best_epoch"]]["val_acc"] is None
                                           else None)["accuracy"]}


def _classical_comparison(kind: str, dec: dict, task: Any, out_of_fold: bool, part: str, y: np.ndarray,
                          scored_metrics: dict, classes: list[str], multi_label: bool, binary_medical: bool,
                          seed: int) -> dict[str, Any]:
    """The classical baseline (:class:`~transferkit.evaluation.classical.ClassicalBaseline`) scored like the model:
    out of fold on the same folds when the model's score is cross-validated, else trained on the training split and
    scored on the same set. ``wins`` says whether it beat the model."""
    from .evaluation.classical import ClassicalBaseline
    from .evaluation.metrics import classification_metrics, multilabel_metrics

    k = len(classes)
    if out_of_fold:
        probs = np.zeros((len(y), k))
        for tr, va in task.folds():
            base = ClassicalBaseline(kind, seed=seed).fit(dec["train"].subset(tr), num_classes=k)
            probs[va] = base.predict_proba(dec["train"].subset(va))
    else:
        base = ClassicalBaseline(kind, seed=seed).fit(dec["train"], num_classes=k)
        probs = base.predict_proba(dec[part])
    m = multilabel_metrics(y, probs, classes) if multi_label else classification_metrics(y, probs, classes)
    key = "micro_f1" if multi_label else "accuracy"
    score, model_score, ci = m[key], scored_metrics[key], m.get(f"{key}_ci")
    if binary_medical:
        from .evaluation.clinical import auroc

        c = scored_metrics["clinical"]
        j = classes.index(c["positive"])
        key, score, model_score, ci = "auroc", auroc(y == j, probs[:, j]), c["auroc"], None
    model_ci = scored_metrics.get(f"{key}_ci") if key != "auroc" else scored_metrics["clinical"].get("auroc_ci")
    lead = model_score - score if score is not None and model_score is not None else None
    half = (model_ci[1] - model_ci[0]) / 2 if model_ci else None
    return {"name": base.name_, "set": "cross-validated" if out_of_fold else part, "metric": key, "score": score,
            "score_ci": ci, "macro_f1": m["macro_f1"], "model_score": model_score, "lead": lead,
            "wins": lead is not None and lead < 0,
            "resolved": None if lead is None or half is None else abs(lead) > half, "half_width": half}


def _has_boxes(data: Any) -> bool:
    """Whether ``data`` is a path to a boxes dataset (COCO JSON, YOLO, Pascal VOC)."""
    from .data.boxes import BoxSet, detect_box_format

    if isinstance(data, BoxSet):
        return True
    if not isinstance(data, (str, Path)):
        return False
    return detect_box_format(data) is not None


def _prepare_texts(data, backbone, arch, labels, text_opts, max_length, image_size, val_fraction, test_fraction, seed,
                   parts=("train", "val", "test")):
    """Texts -> splits, the text backbone (max length applied) and token ids of every split, tokenised once."""
    from .backbones.registry import create_backbone
    from .data.text import encode_set, load_text_splits

    t = time.monotonic()
    if image_size is not None:
        raise TransferkitError("image_size applies to images; for texts set max_length.")
    splits = load_text_splits(data, labels=labels, options=text_opts, val_fraction=val_fraction,
                              test_fraction=test_fraction, seed=seed)
    bb = create_backbone(backbone, arch=arch, modality="text")
    if max_length is not None:
        limit = bb.max_length_limit()
        if not 8 <= max_length <= limit:
            raise TransferkitError(f"max_length {max_length} is out of range for {bb.spec.name}: use 8 to {limit}.")
        bb.preprocess = dataclasses.replace(bb.preprocess, max_length=max_length)
    _announce(splits, bb, f"{bb.num_features}-d, {bb.preprocess.pooling} pooling, {bb.preprocess.max_length} tokens")
    load_s = time.monotonic() - t
    dec = {name: encode_set(ds, bb, splits.classes, f"tokenising {name}") for name, ds in _parts(splits, parts)}
    return splits, bb, dec, load_s


def _prepare_audio(data, backbone, arch, clip_seconds, max_length, image_size, skip_bad, val_fraction, test_fraction,
                   seed, parts=("train", "val", "test")):
    """Audio -> splits, the audio backbone (window length and spectrogram statistics from the training set) and
    every split read once and cut into windows."""
    from .backbones.audio import describe, spectrogram_stats
    from .backbones.registry import create_backbone
    from .data.audio import choose_clip_seconds, read_clips, window_clips
    from .data.sources import load_splits

    t = time.monotonic()
    if max_length is not None:
        raise TransferkitError("max_length applies to texts; for audio set clip_seconds.")
    if clip_seconds is not None and not 0.1 <= clip_seconds <= 60:
        raise TransferkitError(f"clip_seconds {clip_seconds} is out of range: use 0.1 to 60 seconds.")
    splits = load_splits(data, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, skip_bad=skip_bad,
                         kind="audio")
    bb = create_backbone(backbone, arch=arch, modality="audio")
    if image_size is not None:
        if bb.preprocess.kind != "spectrogram" or image_size < 32:
            raise TransferkitError("image_size sets the spectrogram height of a CNN backbone (32 pixels or more).")
        bb.preprocess = dataclasses.replace(bb.preprocess, image_height=image_size)
    load_s = time.monotonic() - t
    rate = bb.preprocess.sample_rate
    for name, ds in _parts(splits, parts):
        if len(ds) == 0:
            raise TransferkitError(f"The {name} split has no recordings: give each class at least 3 recordings, or "
                                   f"put some in a {name}/ folder.")
    clips = {name: read_clips(ds.items, bb.preprocess, skip_bad=skip_bad, array_rate=getattr(ds, "sample_rate", None),
                              description=f"reading {name}") for name, ds in _parts(splits, parts)}
    durations = clips["train"].durations(rate)
    clip = float(clip_seconds) if clip_seconds is not None else choose_clip_seconds(durations)
    if clip_seconds is None and bb.preprocess.kind == "speaker":
        clip = max(clip, 1.6)  # at least one whole 1.6 s partial utterance per window
    bb.preprocess = dataclasses.replace(bb.preprocess, clip_seconds=clip)
    index = {c: i for i, c in enumerate(splits.classes)}
    dec = {}
    for name, ds in _parts(splits, parts):
        c = clips[name]
        d = c.durations(rate)
        info = {"sources": c.source_rates, "silent": len(c.silent), "skipped": len(c.skipped),
                "seconds": {"min": round(float(d.min()), 3), "median": round(float(np.median(d)), 3),
                            "max": round(float(d.max()), 3)}}
        dec[name] = window_clips(c, [index[ds.labels[i]] for i in c.kept], bb.preprocess.clip_samples, info)
        dec[name].info["windows"] = len(dec[name].waves)
    if bb.preprocess.kind == "spectrogram":  # standardise log-mel with the training set's statistics (as AST)
        mean, std = spectrogram_stats(bb, dec["train"].waves)
        bb.preprocess = dataclasses.replace(bb.preprocess, mean=mean, std=std)
    _announce(splits, bb, describe(bb.preprocess))
    return splits, bb, dec, load_s


def _prepare_images(data, backbone, arch, max_length, image_size, skip_bad, val_fraction, test_fraction, seed,
                    window=None, slices=None, patients=False, patient_column=None, parts=("train", "val", "test")):
    """Images -> splits (patient-level with ``patients``), the image backbone (resolution, window and slices
    applied) and every split decoded once."""
    from .backbones.registry import create_backbone
    from .data.images import decode
    from .data.medical import check_slices, check_window
    from .data.sources import load_splits

    t = time.monotonic()
    if max_length is not None:
        raise TransferkitError("max_length applies to texts; for images set image_size.")
    window = check_window(window) if window is not None else None
    slices = check_slices(slices) if slices is not None else None
    splits = load_splits(data, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, skip_bad=skip_bad,
                         patients=patients, patient_column=patient_column)
    bb = create_backbone(backbone, arch=arch, modality="image")
    if window is not None or slices is not None:  # saved with the backbone's preprocessing: predict reads alike
        bb.preprocess = dataclasses.replace(bb.preprocess, window=window or bb.preprocess.window,
                                            slices=slices or bb.preprocess.slices)
    if patients:  # medical: the whole image, padded to a square, never cropped (a finding at the edge stays)
        bb.preprocess = dataclasses.replace(bb.preprocess, resize="pad")
    if image_size is not None:
        if image_size < 32:
            raise TransferkitError(f"Image size {image_size} is too small: use 32 pixels or more.")
        # the backbone's mean/std/interpolation stay; only the resolution changes (and is saved in the bundle)
        bb.preprocess = dataclasses.replace(bb.preprocess, input_size=(image_size, image_size))
    if splits.val is not None and len(splits.val) == 0:
        unit = "patients" if patients else "images"
        raise TransferkitError(f"The validation split is empty: give each class at least 3 {unit} (or a val split), "
                               "so that epochs can be chosen on data the model does not train on.")
    _announce(splits, bb, f"{bb.num_features}-d features, {bb.preprocess.input_size[0]} px")
    load_s = time.monotonic() - t
    dec = {name: decode(ds, bb.preprocess, splits.classes, skip_bad=skip_bad, description=f"decoding {name}")
           for name, ds in _parts(splits, parts)}
    return splits, bb, dec, load_s


def _clinical(model: TransferModel, probs: dict, targets: dict, dec: dict, splits: Any, positive: str | None,
              threshold: str | float | None, balance: str,
              out_of_fold: bool = False) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Calibrate on validation (undo the class weights' shift of the probabilities, then fit a temperature), tune
    the operating threshold there, and give all of it to ``model``; return what the report shows about them, and
    the uncalibrated probabilities (for the reliability plot). Without a validation split, "validation" is the
    out-of-fold predictions of every training example."""
    from .console import warn
    from .evaluation.clinical import (MIN_PER_CLASS_FOR_TEMPERATURE, apply_temperature, choose_positive,
                                      correct_prior, expected_calibration_error, fit_temperature,
                                      parse_threshold_rule, tune_threshold)

    classes = splits.classes
    y_val = targets["val"]
    missing = sorted(set(classes) - {classes[i] for i in set(y_val.tolist())})
    if missing:
        warn(f"the validation set has no {', '.join(missing)}: the threshold stays at 0.5 and no temperature is "
             "fitted; add patients of every class")
    pos = choose_positive(classes, splits.train.counts(), positive)
    # calibrate only where validation can check it (see MIN_PER_CLASS_FOR_TEMPERATURE: measured on ELPV)
    smallest = int(np.bincount(y_val, minlength=len(classes)).min())
    enough = smallest >= MIN_PER_CLASS_FOR_TEMPERATURE
    weights = None
    if balance in ("weights", "sampler") and enough:  # both raise each class's probability by its inverse frequency
        counts = np.bincount(dec["train"].targets.numpy(), minlength=len(classes)).clip(min=1)
        weights = (counts.sum() / (len(classes) * counts)).round(6).tolist()
    corrected = {name: correct_prior(p, weights) for name, p in probs.items()}
    temperature = fit_temperature(corrected["val"], y_val) if enough else 1.0
    rule = parse_threshold_rule(threshold)
    if pos is not None and not missing:
        k = classes.index(pos)
        cut, how = tune_threshold(y_val == k, apply_temperature(corrected["val"], temperature)[:, k], rule)
    elif pos is not None:
        cut, how = (rule, "given") if isinstance(rule, float) else (0.5, "0.5: validation lacks a class")
    else:
        cut, how = 0.5, "top-ranked class"
    if out_of_fold:
        how = how.replace("validation", "the out-of-fold predictions")
    model.clinical = {"positive": pos, "threshold": cut, "threshold_rule": how, "temperature": temperature,
                      "class_weights": weights, "calibrated": enough}
    ece = {name: {"before": expected_calibration_error(targets[name], p),
                  "after": expected_calibration_error(targets[name], model.calibrated(p))}
           for name, p in probs.items()}
    return {**model.clinical, "ece": ece}, probs


def _parts(splits: Any, parts: tuple[str, ...] = ("train", "val", "test")) -> list[tuple[str, Any]]:
    """The splits that exist, among ``parts`` (``rank`` reads only train and val)."""
    return [(name, ds) for name, ds in (("train", splits.train), ("val", splits.val), ("test", splits.test))
            if ds is not None and name in parts]


def _announce(splits: Any, bb: Any, shape: str) -> None:
    from .console import info

    val = f"{len(splits.val)} val" if splits.val is not None else "no val (cross-validated)"
    info(f"data: {len(splits.train)} train / {val} / {len(splits.test) if splits.test else 0} test, "
         f"{len(splits.classes)} classes; backbone {bb.spec.name} ({shape})")


def _kept(encoded: Any) -> list[int]:
    """Each decoded example's position in its source (unreadable files skipped leave gaps)."""
    return list(encoded.kept) if getattr(encoded, "kept", None) else list(range(len(encoded)))


def _estimate(cv: Any, scores: dict[str, Any], multi_label: bool, balanced: bool = False) -> dict[str, Any]:
    """What the report says about a cross-validated estimate: how it was made, its score and interval (the fold
    scores are balanced accuracy for medical runs, which choose by it)."""
    key = "micro_f1" if multi_label else "balanced_accuracy" if balanced and "balanced_accuracy" in scores else \
        "accuracy"
    folds = np.asarray(cv.fold_scores, dtype=float)
    return {"kind": "cross-validation", **cv.to_dict(), "metric": key, "score": scores[key],
            "score_ci": scores.get(f"{key}_ci"), "n": scores["n"],
            "fold_mean": float(folds.mean()), "fold_std": float(folds.std(ddof=1)) if len(folds) > 1 else 0.0}


def _names(encoded: Any, source: Any) -> list[str]:
    """Where each scored example came from: a text's file/row, an image's path (or its position for arrays)."""
    if hasattr(encoded, "names"):
        return list(encoded.names)
    return [f"array #{i}" if hasattr(source.items[i], "shape") else str(source.items[i]) for i in encoded.kept]
