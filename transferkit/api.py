"""The public entry points that take plain keyword arguments: :func:`fit` and :func:`rank`.

They map their arguments onto :class:`~transferkit.tasks.RunSettings` and the task's own options, and leave the run
to :func:`transferkit.pipeline.run` (data -> task -> backbone -> strategy -> engine -> evaluation/report -> bundle).
"""

from __future__ import annotations

import functools
import numbers
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import TransferkitError
from .rundir import holds_output

if TYPE_CHECKING:
    from .bundle.detection import DetectionModel
    from .bundle.model import TransferModel



def parse_budget(budget: str | float | int | None) -> float | None:
    """``"10m"``, ``"90s"``, ``"1h"``, ``"1h30m"`` or seconds -> seconds; ``None`` means no budget."""
    if budget is None or budget == "":
        return None
    from .tasks.base import check_budget

    if isinstance(budget, numbers.Real) and not isinstance(budget, bool):
        check_budget(budget)
        return float(budget)
    text = str(budget).strip().lower()
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", text)
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
    elif not parts or "".join(f"{n}{u}" for n, u in parts) != text.replace(" ", ""):
        raise TransferkitError(f"Budget {budget!r} is not a duration: write e.g. 90s, 10m or 1h30m.")
    else:
        seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    check_budget(seconds)
    return seconds


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
    thresholds: str | float | None = None,
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
    max_image_pixels: int | None = None,
    workers: int | None = None,
    compile: bool = False,
    explain: bool = True,
    init_from: str | Path | None = None,
    replay: Any = None,
    replay_fraction: float = 0.25,
    old_test: Any = None,
    l2sp: float | None = None,
    log_with: str | list[str] | None = None,
    log_dir: str | Path | None = None,
    **strategy_options: Any,
) -> TransferModel | DetectionModel:
    """Adapt a pretrained backbone to labelled images, texts or audio and return the trained :class:`TransferModel`.

    Images: ``data`` is a folder of class folders (optionally split into ``train/``, ``val/``, ``test/``), a
    CSV/TSV/JSONL file with ``path`` and ``label`` columns, or a :class:`transferkit.data.ImageSet`.
    Texts: a folder of class folders of ``.txt`` files, a CSV/TSV/JSONL with text and label columns (named by
    ``text_column``/``label_column`` or guessed), a pandas DataFrame, a Hugging Face dataset (or the folder it
    was saved to), or a list of strings with ``labels=[...]``. Texts default to the offline ``all-MiniLM-L6-v2``
    encoder, images to ``efficientnet_lite0``; ``max_length`` overrides the encoder's token limit, ``image_size``
    its resolution.
    Audio: a folder of class folders of wav/flac/ogg (mp3 where libsndfile decodes it), a CSV/JSONL of
    ``path,label``, or an :class:`transferkit.data.AudioSet`; ``efficientnet_lite0`` on log-mel spectrograms by
    default, ``backbone="speaker-encoder"`` for voices. Recordings are cut into windows of ``clip_seconds``
    (default: from the training durations) whose outputs are averaged per recording.

    Multi-label (images, audio, texts): list-valued labels (JSONL lists, Python lists), or ``label_sep="|"`` for
    cells such as ``"cat|dog"``. One sigmoid per label; splits and folds by iterative stratification (every label in
    training, each spread over the splits); each label's threshold tuned on validation or out-of-fold predictions
    to maximise its F1 (``thresholds="tuned"``, the default; or one number for all, e.g. ``0.5``); scores: micro-
    and macro-F1, mAP, exact match, Hamming score and per-label AUROC.

    Imbalance (every classifier): ``balance="weights"`` (class-weighted loss; multi-label: each label's positives
    weighed by its negatives over its positives, at most 10), ``"sampler"`` (classes drawn equally often) or
    ``"none"``. By default weights go on when the largest class has over 3x the smallest's training examples
    (medical: always), and a balanced run chooses epochs and models by balanced accuracy.

    Medical images (``modality="medical"``, or automatically for DICOM/NIfTI files or a manifest with a
    ``patient_id`` column): DICOM, NIfTI and 16-bit PNG/TIFF become 8-bit through ``window`` (``auto``, a CT preset
    such as ``lung``, or ``"centre,width"``; see :mod:`transferkit.data.medical`), volumes through ``slices``
    (``2d`` or ``2.5d``). Splits are patient-level (``patient_column``, or the DICOM PatientID, hashed); the loss
    is class-weighted (``balance``: ``weights``, ``sampler`` or ``none``) and epochs are chosen by balanced
    accuracy. With at least 20 validation examples of each class the model's probabilities are calibrated (the
    class weights' shift undone, then temperature scaling on validation), and a binary
    model decides at ``threshold`` on the ``positive`` class's probability (``youden`` by default, tuned on
    validation; or ``sensitivity=0.95``, ``specificity=0.9``, or a number). The report adds AUROC, sensitivity,
    specificity, PPV/NPV with 95% intervals, balanced accuracy, calibration error and ``roc.png``. Several findings
    per image (multi-label medical data) are scored per finding, each with its tuned threshold.

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
    ``resume=True`` continues an interrupted run into ``out`` from its last epoch checkpoint (kept in ``.NAME.work``
    beside ``out``), and is refused when the data or a setting that shapes the model differ. With ``out``, the
    run folder receives ``model/`` (the bundle), ``metrics.json``, plots and ``report.md``: written beside it and
    swapped in whole at the end; a second run into the same ``out`` at the same time is refused. Images over
    ``max_image_pixels`` (default 80 million) or more elongated than 50:1 are refused before decoding (skipped with
    ``skip_bad``); :func:`transferkit.data.images.image_limits` raises the limit for ``predict`` and the rest.

    Speed: ``workers`` loader processes feed each training process (default: none on the CPU, where the data are
    already decoded in memory and a worker would take a core from training; ``min(8, cpus - 1)`` on a GPU, with
    pinned memory and non-blocking copies). ``compile=True`` trains ``torch.compile(network)`` in the fine-tuning
    strategies (``finetune``, ``gradual``, ``scratch``, and ``auto`` when it fine-tunes): the first step then
    compiles, which costs tens of seconds to minutes (``metrics["timings"]["compile_s"]``), and pays back only on
    long runs on a GPU. The saved bundle is the same either way.

    Explanations (classifiers; ``explain=False`` skips them): the report's section "What the model looks at" shows
    maps (images, spectrograms) or marked words (texts) for each class's most confident right answers and its most
    confidently wrong ones, warns when a class's images are explained mostly by their border (a shortcut such as a
    ruler or a corner mark), and ``metrics["explanations"]["deletion"]["score"]`` says whether the maps are faithful
    (the probability falls faster when the map's top regions are removed than random ones: above 0; about 0: the map
    decorates). See :mod:`transferkit.evaluation.explain`.

    Further fine-tuning: ``init_from="runs/x/model"`` starts from a bundle instead of pretrained weights (image,
    medical, text and audio classifiers, and detectors): its backbone, head and preprocessing. Classes the new data
    add get new rows in the head; the bundle's classes keep theirs, and stay classes of the model when the new data
    lack them (the new data may then hold a single class). ``replay=OLD_DATA`` mixes ``replay_fraction`` of each old
    class's examples into training (and, where there is a validation split, into it in the same proportion), so old
    classes are not forgotten; ``old_test=OLD_TEST`` scores the bundle and the new model on the old task's test data
    (``metrics["continued"]["forgetting"]``). ``l2sp=0.01`` (any fine-tuning strategy, with or without
    ``init_from``) pulls the weights toward their starting point instead of decaying them (L2-SP, Li et al. 2018).
    The new bundle's model card records its lineage. See :mod:`transferkit.tasks.continued`.

    Tracking: ``log_with="tensorboard"``, ``"mlflow"`` or ``"all"`` logs the settings, each epoch's curves (and each
    fold's score), the final scores, and the report and plots through Accelerate's trackers, beside ``out`` (in its
    parent folder) or in ``log_dir``; see :mod:`transferkit.engine.tracking`.

    Examples:

        >>> model = transferkit.fit("data/parts", backbone="efficientnet_lite0", strategy="auto", budget="10m")
        >>> model.predict(["part.jpg"])[0]["label"]
        >>> news = transferkit.fit(df, text_column="body", label_column="topic", strategy="lora", out="runs/news")
        >>> news.predict(["Shares rose after the merger."])[0]["label"]

    Settings file: with ``out``, the run folder also receives ``run.yaml``, every setting of this call (the default
    backbone by its name, ``precision="auto"`` as what it came to) and what the run resolved; ``transferkit fit
    --config runs/x/run.yaml`` runs it again with the same result on the same machine and seed (a ``budget`` plans
    epochs from measured speed, so a budgeted run can differ). See :mod:`transferkit.runfile`.

    Raises :class:`transferkit.TransferkitError` (one line naming the file or value) for bad input.
    """
    call = dict(locals())  # every argument, for run.yaml
    from .data.images import image_limits
    from .pipeline import run
    from .tasks import RunSettings

    names = backbone_names(backbone)
    several = names if len(set(names)) > 1 else None
    if several and init_from is not None:
        raise TransferkitError("--init-from continues the bundle's own backbone: leave the list of backbones out.")
    if several is None and (isinstance(backbone, (list, tuple)) or (isinstance(backbone, str) and "," in backbone)):
        backbone = names[0] if names else None  # one name written as "a,", "a,a" or ["a"]
    given = {"labels": labels, "text_column": text_column, "label_column": label_column, "label_sep": label_sep,
             "thresholds": thresholds,
             "encoding": None if encoding == "utf-8" else encoding, "max_length": max_length,
             "clip_seconds": clip_seconds, "window": window, "slices": slices, "patient_column": patient_column,
             "positive": positive, "threshold": threshold, "balance": balance}
    if init_from is not None:  # a hub id: the bundle's downloaded or cached copy
        from .bundle.hub import local_folder

        init_from = local_folder(init_from)
    settings = RunSettings(backbone=None if several else backbone, strategy=strategy, out=out,
                           seconds=parse_budget(budget), seed=seed, skip_bad=skip_bad, val_fraction=val_fraction,
                           test_fraction=test_fraction, cv=cv, precision=precision, arch=arch, cpu=cpu, resume=resume,
                           image_size=image_size, scratch_baseline=scratch_baseline, workers=workers,
                           compile=compile, explain=explain, init_from=init_from, replay=replay,
                           replay_fraction=replay_fraction, old_test=old_test,
                           strategy_options={**strategy_options, **({"l2sp": l2sp} if l2sp is not None else {})})
    settings.after_training = functools.partial(_run_file, call)
    from .engine.tracking import parse_log_with, run_files, tracking

    parse_log_with(log_with)  # a missing package fails before any work
    logged = {"command": "fit", "data": str(data) if isinstance(data, (str, Path)) else type(data).__name__,
              "backbone": backbone if several is None else ",".join(several), "strategy": strategy, "budget": budget,
              "seed": seed, "cv": cv, "precision": precision, "image_size": image_size, "task": task,
              "modality": modality, **{k: v for k, v in given.items() if v is not None and k != "labels"},
              **settings.strategy_options}
    with image_limits(max_image_pixels), tracking(log_with, log_dir, out, None, logged) as tracker:
        task_obj, options = resolve(data, task, modality, given)
        if tracker is None:
            return run(data, task_obj, settings, options, backbones=several)
        with tracker.listen():
            model = run(data, task_obj, settings, options, backbones=several)
        tracker.finish({k: model.metrics.get(k) for k in ("test", "val", "estimate", "timings")},
                       run_files(out) if out is not None else [])
        return model


def _run_file(call: dict[str, Any], model: Any, metrics: dict[str, Any]) -> dict[str, bytes]:
    """``run.yaml`` for a :func:`fit` called with ``call`` (its arguments) that came to ``metrics``; and the data's
    name (a folder's or file's, never its path) into the bundle, for its hub card's ``datasets``."""
    from .runfile import recorded, resolve_defaults, settings_file

    data = call["data"]
    if isinstance(data, (str, Path)) and isinstance(getattr(model, "meta", None), dict):
        path = Path(data).expanduser().resolve()
        model.meta["dataset"] = path.name if path.is_dir() else path.stem

    settings = recorded(call, drop=("labels", "cpu", "strategy_options"),
                        paths=("backbone", "init_from", "replay", "old_test", "log_dir"))
    options = dict(call["strategy_options"])
    at = list(settings).index("strategy") + 1  # the flags of the strategy's options next to it
    items = list(settings.items())
    settings = dict(items[:at] + [(k, options.pop(k, None)) for k in ("epochs", "lr", "batch_size")] + items[at:])
    if options:
        settings["strategy_options"] = options
    resolve_defaults(settings, metrics)
    name = (metrics.get("backbone") or {}).get("name")
    in_memory = [k for k in ("replay", "old_test")
                 if settings[k] is not None and not isinstance(settings[k], (str, Path))]
    settings |= dict.fromkeys(in_memory)  # data given in memory cannot be written down
    details = metrics.get("details") or {}
    resolved = {**({"given_in_memory": in_memory} if in_memory else {}),
                "task": metrics.get("task"), "strategy": metrics.get("strategy"), "backbone": name,
                "precision": metrics.get("precision"), "device": metrics.get("device"),
                **({"options": details["config"]} if isinstance(details.get("config"), dict) else {})}
    note = (f"{' and '.join(in_memory)} were given in memory: give them as paths beside --config."
            if in_memory else None)
    return {"run.yaml": settings_file("fit", call["data"], settings, resolved, note=note)}


# fit's ``task`` argument -> the registered task it names (None: decided by ``modality`` or by the data)
TASK_WORDS = {"auto": None, "classify": None, "detect": "detection"}


def resolve(data: Any, task: str = "auto", modality: str = "auto", given: dict[str, Any] | None = None) -> tuple:
    """The registered task for ``data`` (``task="detect"``, a named ``modality``, or what the data look like) and
    its options from ``given`` (None values count as not given)."""
    from .tasks import get_task, resolve_task, task_options

    given = given or {}
    if task not in TASK_WORDS:
        raise TransferkitError(f"Task {task!r} is unknown: choose auto, classify or detect.")
    named = TASK_WORDS[task] or (modality if modality != "auto" else None)
    if named is not None:
        chosen = get_task(named)
        if task == "classify" and not chosen.ranks_backbones:  # only detection today
            raise TransferkitError(f"modality {modality!r} is not classification: use task='detect' (or leave "
                                   "task at auto).")
    else:  # "classify" leaves detection out of what the data may be
        chosen = resolve_task(data, "auto", given, exclude=("detection",) if task == "classify" else ())
    return chosen, task_options(chosen, given)


@holds_output("out")
def rank(data: Any, backbones: list[str] | str, *, validate: bool = False, strategy: str = "finetune",
         budget: str | float | None = None, out: str | Path | None = None, seed: int = 0, skip_bad: bool = False,
         image_size: int | None = None, precision: str = "auto", val_fraction: float | None = 0.15,
         test_fraction: float | None = 0.2, modality: str = "auto", labels: list[Any] | None = None,
         text_options: Any = None, max_length: int | None = None, clip_seconds: float | None = None,
         window: str | None = None, slices: str | None = None, patient_column: str | None = None,
         arch: str | None = None, label_sep: str | None = None, **validate_options: Any) -> dict[str, Any]:
    """Score each of ``backbones`` on ``data`` (any classification data :func:`fit` takes) and rank them by LogME.

    Only the training and validation splits are read (split as :func:`fit` splits them with the same ``seed`` and
    fractions), so the scores never see the test set; the loader options (``modality``, ``text_options`` (a
    :class:`transferkit.data.text.TextOptions`), ``window``, ``arch``, ``label_sep`` ...) mean what they mean for
    :func:`fit`. Multi-label data are ranked by LogME on each label's 0/1 column; LEEP, NCE, H-score and k-NN score
    one class per example and are left out (None).

    Args:
        validate: also fine-tune every backbone (``strategy``, ``budget`` per backbone, ``validate_options`` such
            as ``epochs=3``; :func:`fit` also reports its test score) and report each score's weighted Kendall tau
            with the fine-tuned validation score.
        out: write ``rank.json`` and ``rank.md`` there.

    Returns:
        ``{"rows": [...], "ranking": [...], "ranked_by": "logme", "classes": [...], "validation": {...}}``.

    Raises:
        TransferkitError: fewer than two backbones, one listed twice, multi-label data, or bad input.

    Examples:

        >>> transferkit.rank("data/parts", "efficientnet_lite0,resnet18")["ranking"][0]
    """
    from .ranking import agreement, score_backbones, write
    from .tasks import RunSettings

    names = backbone_names(backbones)
    text = {}
    if text_options is not None:
        text = {"text_column": text_options.text_column, "label_column": text_options.label_column,
                "label_sep": text_options.label_sep,
                "encoding": None if text_options.encoding == "utf-8" else text_options.encoding}
    given = {"labels": labels, "max_length": max_length, "clip_seconds": clip_seconds, "window": window,
             "slices": slices, "patient_column": patient_column, **text,
             "label_sep": label_sep if label_sep is not None else text.get("label_sep")}
    task, options = resolve(data, "classify", modality, given)
    settings = RunSettings(seed=seed, skip_bad=skip_bad, image_size=image_size, precision=precision, arch=arch,
                           val_fraction=val_fraction, test_fraction=test_fraction)
    if validate:  # the fine-tuning check's strategy and its options are refused before any backbone is scored
        task.create_strategy(strategy, None, {})
    result = score_backbones(data, names, task, settings, options)
    if validate:
        same = {"val_fraction": val_fraction, "test_fraction": test_fraction, "modality": task.name,
                **{k: v for k, v in given.items() if v is not None}, "arch": arch}
        scored = {}
        for name, row in zip(names, result["rows"], strict=True):  # fine-tuned on the very splits scored above
            t = time.monotonic()
            model = fit(data, backbone=name, strategy=strategy, budget=budget, seed=seed, skip_bad=skip_bad,
                        image_size=image_size, precision=precision,
                        **{k: v for k, v in same.items() if v is not None}, **validate_options)
            best = model.metrics["history"]["epochs"][model.metrics["history"]["best_epoch"]]
            # small data: no validation split, so the cross-validated (out-of-fold) score stands in
            own = "map" if model.multi_label else "accuracy"  # what chose the model's epochs
            scored[name] = best["val_acc"] if best["val_acc"] is not None else model.metrics["val"][own]
            row["finetuned_val"] = scored[name]
            row["finetuned_test"] = (model.metrics.get("test") or {}).get("accuracy")
            row["finetune_s"] = round(time.monotonic() - t, 1)
        result["validation"] = agreement(result["rows"], scored, strategy)
    if out is not None:
        write(Path(out), result)
    return result


def load(folder: str | Path) -> TransferModel | DetectionModel:
    """Load a bundle saved by ``model.save()`` (``runs/NAME/model``): a classifier or a detector, as its
    ``config.json`` says, read by the task that saved it. No pickle, no code from the folder.

    ``folder`` may also be a Hugging Face Hub id (``"org/name"``, when no such folder is here): a bundle folder is a
    hub model repository (its ``README.md`` is the model card under the hub's metadata header), so one pushed with
    ``huggingface-cli upload org/name runs/NAME/model`` loads by its id. Only the bundle's files are downloaded
    (JSON, safetensors, Markdown, vocabularies); offline, a copy in the hub cache loads and anything else fails in
    one line.

    Raises:
        TransferkitError: the folder is not a bundle, is damaged, or holds a kind no registered task reads.

    Examples:

        >>> model = transferkit.load("runs/parts/model")
        >>> model.predict(["part.jpg"])[0]["label"]
    """
    from . import tasks  # noqa: F401  (the built-in tasks register themselves as bundle readers)
    from .bundle.model import load as load_bundle

    return load_bundle(folder)


def backbone_names(backbone: Any) -> list[str]:
    """A name, comma-separated names or a list of names -> the names, stripped, in order ([] for anything else,
    such as None or a BackboneSpec)."""
    if isinstance(backbone, str):
        backbone = backbone.split(",")
    if not isinstance(backbone, (list, tuple)):
        return []
    return [str(b).strip() for b in backbone if b is not None and str(b).strip()]
