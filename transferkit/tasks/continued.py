"""Further fine-tuning from a bundle (``fit NEW_DATA --init-from runs/x/model``): classifiers of every kind of data,
and detectors.

What changes against a run from a pretrained backbone, in the order the run meets it:

- **The start** (:func:`load_start`): the bundle is read as ``load`` reads it (safetensors + JSON, checked), and
  refused in one line when it is of another modality than the data (a detector for class folders, an image model
  for texts), of another backbone than ``backbone=`` names, when a preprocessing option is given (the bundle's
  preprocessing is kept: its size, normalisation, window, token limit, clip length and spectrogram statistics), or
  with the ``scratch`` strategy (which would throw the weights away).
- **The classes** (:func:`continue_splits`): the bundle's classes first, in its order, then the classes only the new
  data hold (sorted). A bundle class the new data lack stays a class of the model; the new data may hold a single
  class, and their test split classes of the bundle's that their training split lacks.
- **Replay** (:func:`replay_examples`): ``replay=OLD_DATA`` draws ``replay_fraction`` of the old data's examples
  (stratified by class, at least one per class, seeded; its ``test/`` split and the files the bundle recorded as its
  test set, by path or content, left out) into the new data: into training, and where the new data have a
  validation split into it in the same proportion (epochs and models are then chosen on old classes too). The test
  split stays the new data's.
- **The head** (:func:`start_head`): the bundle's head with a row per class: the bundle's rows kept, new classes'
  rows initialised as a fresh head's. Fine-tuning, gradual unfreezing and LoRA start from it (LoRA then writes no
  ``adapter/`` for the hub's base encoder: it was trained on the bundle's weights). The linear probe refits the rows
  of the classes it has examples of and keeps the bundle's row for the others (single-label models), so its folds
  and the saved model agree; without replay those rows are rarely the largest (the refitted rows' scale is the
  probe's own), which docs/benchmarks.md shows. A detector continues whole, its class layer grown alike
  (``Detector.grow``).
- **What was forgotten** (:func:`forgetting`): with ``old_test=OLD_TEST`` the bundle and the new model are both
  scored on the old task's test data (accuracy; balanced accuracy for a medical model, mAP for a multi-label
  one, COCO mAP for a detector), and the report says how much was lost.
- **Lineage** (:func:`lineage`): the new bundle's ``config.json`` and model card name the bundle it started from,
  with that bundle's data and scores, and that bundle's own lineage after it.

L2-SP (``l2sp=``, weights pulled toward the starting point) is a fine-tuning option of its own
(:class:`transferkit.engine.optim.L2SP`; for detectors, on the body), for runs from a bundle or from pretrained
weights alike.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TransferkitError
from ..io import file_digest

# options that change the backbone's preprocessing: a run from a bundle keeps the bundle's
PREPROCESSING_OPTIONS = ("image_size", "max_length", "clip_seconds", "window", "slices")
DEFAULT_REPLAY_FRACTION = 0.25  # of each old class, when --replay is given without --replay-fraction


@dataclass
class StartPoint:
    """A run's starting bundle and what the new data make of it."""

    model: Any  # the loaded TransferModel
    folder: Path
    config: dict[str, Any]
    new_classes: list[str] = field(default_factory=list)  # classes only the new data hold
    missing: list[str] = field(default_factory=list)  # bundle classes absent from the new training data
    replayed: dict[str, int] = field(default_factory=dict)  # old examples drawn, per class (boxes for detectors)
    replayed_examples: int = 0  # old examples drawn (images, texts, recordings)
    replayed_to_val: int = 0  # of those, how many went to the validation split

    @property
    def classes(self) -> list[str]:
        return list(self.model.classes)

    def backbone(self) -> Any:
        """A copy of the bundle's backbone, its preprocessing with it (what the strategy starts from); for a
        detector, the whole detector."""
        import copy

        classifier = getattr(self.model, "classifier", None)
        return copy.deepcopy(classifier.backbone if classifier is not None else self.model.detector)


def load_start(task: Any, settings: Any, options: Any) -> StartPoint | None:
    """The bundle ``settings.init_from`` names, checked against this run (None without one).

    Raises:
        TransferkitError: one line: not a bundle, a detector, another modality or backbone, or a preprocessing
            option given alongside.
    """
    if settings.init_from is None:
        return None
    from ..bundle.format import read_config, reader_for
    from ..bundle.model import TransferModel

    folder = Path(settings.init_from)
    if not folder.is_dir():
        what = "is a file, not a bundle folder" if folder.exists() else "no such bundle folder"
        raise TransferkitError(f"--init-from {folder}: {what}; give a run's model/ folder (runs/NAME/model).")
    if settings.out is not None and folder.resolve().is_relative_to(Path(settings.out).resolve()):
        raise TransferkitError(f"--out {settings.out} holds the bundle --init-from continues ({folder}), which the run "
                               "would replace: choose another --out.")
    config = read_config(folder)
    if settings.strategy == "scratch":
        raise TransferkitError("--init-from continues a bundle's weights, which scratch would replace by random ones: "
                               "choose another strategy (auto, linear, finetune, gradual...).")
    reader = reader_for(config)
    if reader.modality != task.modality:
        kind = config["task"]
        raise TransferkitError(f"--init-from {folder} holds {'an' if kind[0] in 'aeiou' else 'a'} {kind} model, but "
                               f"these data are {task.name}: continue from a bundle trained on the same kind of data.")
    name = config["backbone"]["name"]
    if settings.backbone is not None and settings.backbone != name:
        raise TransferkitError(f"--init-from {folder} was trained on backbone {name}, not {settings.backbone}: "
                               "leave --backbone out (the bundle's backbone is continued).")
    if settings.arch is not None and settings.arch != config["backbone"]["arch"]:
        raise TransferkitError(f"--init-from {folder} has architecture {config['backbone']['arch']!r}: leave --arch "
                               "out.")
    given = {"image_size": settings.image_size,
             **{k: getattr(options, k, None) for k in PREPROCESSING_OPTIONS if k != "image_size"}}
    for key, value in given.items():
        if value is not None and value != bundle_value(key, config):
            raise TransferkitError(f"{key} {value!r}: a run from --init-from keeps the bundle's preprocessing "
                                   f"({describe_preprocess(config)}); leave {key} out.")
    model = reader.load_model(folder, config) if hasattr(reader, "load_model") else \
        TransferModel.load(folder, config, reader)
    return StartPoint(model=model, folder=folder, config=config)


def bundle_value(key: str, config: dict[str, Any]) -> Any:
    """What a bundle's preprocessing holds for the option ``key`` (a run may give the same value again)."""
    pre = config.get("preprocess") or {}
    if key == "image_size":
        if "detector" in config:
            return (config["detector"] or {}).get("image_size")
        size = pre.get("input_size")
        return size[0] if isinstance(size, list) and len(set(size)) == 1 else pre.get("image_height")
    return pre.get(key)


def describe_preprocess(config: dict[str, Any]) -> str:
    """A few words on a bundle's preprocessing, for the refusal above."""
    pre = config.get("preprocess") or {}
    if "detector" in config:
        return f"{(config['detector'] or {}).get('image_size')} px"
    if "input_size" in pre and isinstance(pre["input_size"], list):
        return f"{pre['input_size'][0]} px"
    if "max_length" in pre:
        return f"{pre['max_length']} tokens"
    if "clip_seconds" in pre:
        return f"{pre['clip_seconds']} s windows"
    return "as saved"


def continue_splits(splits: Any, start: StartPoint | None, task: Any, settings: Any, options: Any) -> Any:
    """``splits`` with the bundle's classes first and, with ``settings.replay``, old training examples added to the
    training split. Unchanged without a start."""
    if settings.replay is None and settings.replay_fraction != DEFAULT_REPLAY_FRACTION:
        raise TransferkitError("--replay-fraction is the share of --replay's data: give --replay OLD_DATA too, or "
                               "leave it out.")
    for flag, given in (("--replay", settings.replay), ("--old-test", settings.old_test)):
        if isinstance(given, (str, Path)) and not Path(given).exists():  # said before any training, not after it
            raise TransferkitError(f"{flag} {given}: no such file or folder.")
    if start is None:
        if settings.replay is not None or settings.old_test is not None:
            raise TransferkitError("--replay and --old-test need --init-from: they refer to the data of the bundle a "
                                   "run continues from.")
        return splits
    old = start.classes
    multi, was = bool(getattr(splits.train, "multi_label", False)), bool(getattr(start.model, "multi_label", False))
    if multi != was:
        kinds = ("single-label", "multi-label")
        raise TransferkitError(f"--init-from {start.folder} is a {kinds[was]} model, but these data are "
                               f"{kinds[multi]}: continue from a model of the same kind.")
    given = list(splits.classes)
    start.new_classes = [c for c in given if c not in old]
    start.missing = [c for c in old if c not in given]
    splits.classes = old + start.new_classes
    if settings.replay is not None:
        drawn = replay_examples(task, start, settings, options, splits.classes)
        if not set(present(drawn)) & set(old):
            raise TransferkitError(f"--replay {settings.replay} holds no example of the classes of --init-from "
                                   f"{start.folder} ({', '.join(map(str, old[:5]))}{' ...' if len(old) > 5 else ''}): "
                                   "replay the bundle's own training data.")
        if splits.val is not None and len(splits.val) and len(drawn) > 1:
            # validation chooses epochs and models: it sees the old classes too, in the new data's proportion
            share = len(splits.val) / (len(splits.val) + len(splits.train))
            to_val = held_back(drawn, share, settings.seed)
            rest = sorted(set(range(len(drawn))) - set(to_val))
            splits.val = joined(splits.val, drawn.subset(to_val))
            drawn, start.replayed_to_val = drawn.subset(rest), len(to_val)
        splits.train = joined(splits.train, drawn)
    trained = present(splits.train)
    if len(trained) < task.min_classes:
        raise TransferkitError(f"The training data hold one class only ({', '.join(map(str, trained)) or 'none'}): "
                               f"add --replay with the data of --init-from {start.folder}, so that the model keeps "
                               "seeing its other classes.")
    unseen = [c for c in old if c not in trained]
    if unseen:
        from ..console import warn

        warn(f"{len(unseen)} of the bundle's classes have no training example in this run "
             f"({', '.join(map(str, unseen[:5]))}{' ...' if len(unseen) > 5 else ''}): they stay classes of the "
             "model, but are mostly forgotten; --replay the bundle's training data to keep them")
    return splits


def present(data: Any) -> list[Any]:
    """The classes that ``data`` (a training split) holds examples of."""
    return sorted(data.counts(), key=str)


def per_class(labels: list[Any], how_many: Any, seed: int) -> list[int]:
    """Positions drawn from each class (an example's rarest label, for several), ``how_many(n)`` of a class's ``n``,
    seeded; sorted."""
    from ..data.labels import rarest_labels

    by_class: dict[Any, list[int]] = {}
    for i, key in enumerate(rarest_labels(labels)):
        by_class.setdefault(key, []).append(i)
    rng = random.Random(seed)
    out: list[int] = []
    for key in sorted(by_class, key=str):
        idx = by_class[key]
        out += rng.sample(idx, max(0, min(len(idx), how_many(len(idx)))))
    return sorted(out)


def held_back(data: Any, share: float, seed: int) -> list[int]:
    """About ``share`` of ``data``'s examples, stratified (each class keeps at least one for training)."""
    return per_class(data.labels, lambda n: min(n - 1, round(share * n)), seed + 1)


def replay_examples(task: Any, start: StartPoint, settings: Any, options: Any, classes: list[str]) -> Any:
    """``settings.replay_fraction`` of the old data's training examples, stratified by class (at least one of each
    class, seeded by ``settings.seed``). The old data's own test split (a ``test/`` folder, a split column) and the
    test files the bundle recorded (a test split it drew at random) are left out."""
    import dataclasses

    from ..console import info

    reading = dataclasses.replace(settings, val_fraction=0.0, test_fraction=0.0, init_from=None, replay=None,
                                  old_test=None)
    try:
        old = task.load_splits(settings.replay, reading, options).train
    except TransferkitError as err:
        raise TransferkitError(f"--replay {settings.replay}: {err}") from None
    tested = [Path(f) for f in start.config.get("test_files") or [] if isinstance(f, str)]
    if tested and isinstance(getattr(old, "items", None), list):
        # by path, and by content (a copy of the data elsewhere holds the same files under other names)
        digests = {file_digest(f, "sha1") for f in tested if f.is_file()}
        paths = {str(f) for f in tested}

        def was_tested(item: Any) -> bool:
            if not isinstance(item, (str, Path)):
                return False
            path = Path(item)
            return str(path.resolve()) in paths or (path.is_file() and file_digest(path, "sha1") in digests)

        keep = [i for i, item in enumerate(old.items) if not was_tested(item)]
        if len(keep) < len(old):
            info(f"replay: {len(old) - len(keep)} file(s) the bundle was tested on are left out")
            old = old.subset(keep)
    labels = [tuple(y) if isinstance(y, (list, tuple)) else y for y in old.labels]
    names = {y for ys in labels for y in (ys if isinstance(ys, tuple) else (ys,))}
    unknown = sorted(names - set(classes), key=str)
    if unknown:
        raise TransferkitError(f"--replay {settings.replay} holds classes {', '.join(map(str, unknown[:5]))}, which "
                               f"neither --init-from {start.folder} nor the new data know: replay the bundle's own "
                               "training data.")
    picked = per_class(labels, lambda n: max(1, math.ceil(settings.replay_fraction * n)), settings.seed)
    drawn = old.subset(picked)
    start.replayed, start.replayed_examples = dict(sorted(drawn.counts().items())), len(drawn)
    info(f"replay: {len(drawn)} of {len(old)} old training examples ({settings.replay_fraction:g} of each class) "
         "join the new data")
    return drawn


def joined(new: Any, old: Any) -> Any:
    """The new training examples followed by the replayed ones (the same kind of set)."""
    if type(new) is not type(old):
        raise TransferkitError(f"--replay data are {type(old).__name__}, the new data {type(new).__name__}: give both "
                               "as the same kind of source.")
    return new.joined(old)


def start_head(start: StartPoint, classes: list[str], seed: int) -> Any:
    """A :class:`~transferkit.heads.LinearHead` over ``classes`` whose rows for the bundle's classes are the bundle's
    (new classes get a fresh head's rows), and the indices of those kept rows."""
    import torch

    from ..heads import LinearHead

    old_head = start.model.classifier.head
    torch.manual_seed(seed)
    head = LinearHead(old_head.fc.in_features, len(classes))
    kept = [classes.index(c) for c in start.classes]
    with torch.no_grad():
        head.fc.weight[kept] = old_head.fc.weight.detach().float()
        head.fc.bias[kept] = old_head.fc.bias.detach().float()
    return head, kept


def forgetting(start: StartPoint, model: Any, settings: Any, options: Any) -> dict[str, Any] | None:
    """The bundle and the new model scored on ``settings.old_test`` (the old task's test data) before and after, and
    how much was lost: accuracy (balanced accuracy for a medical model, mAP for a multi-label one, COCO mAP for a
    detector). None without ``old_test``."""
    if settings.old_test is None:
        return None
    if not hasattr(start.model, "predict_encoded"):  # a detector: COCO mAP of each model on the old test images
        try:
            before = start.model.evaluate(settings.old_test, settings.skip_bad)
        except TransferkitError as err:
            raise TransferkitError(f"--old-test {settings.old_test}: {err}") from None
        after = model.evaluate(settings.old_test, settings.skip_bad)
        keys = ("map", "map_50")  # None where COCO has nothing to score: counted as 0 here
        return {"old_test": str(settings.old_test), "n": before["n_images"], "metric": "map",
                "before": {k: before[k] or 0.0 for k in keys}, "after": {k: after[k] or 0.0 for k in keys},
                "forgotten": (before["map"] or 0.0) - (after["map"] or 0.0)}
    from ..evaluation.metrics import classification_metrics, multilabel_metrics

    try:
        reading = {k: getattr(options, k) for k in start.model.task.reading_options
                   if getattr(options, k, None) is not None}  # texts: the columns and encoding of the new data
        data = start.model.task.read_labelled(start.model, settings.old_test, settings.skip_bad, **reading)
    except TransferkitError as err:
        raise TransferkitError(f"--old-test {settings.old_test}: {err}") from None
    y = data.targets.numpy()
    out: dict[str, Any] = {"old_test": str(settings.old_test), "n": int(len(y))}
    # the bundle's classes come first in the new model, so a target means the same class in both
    for when, m in (("before", start.model), ("after", model)):
        probs = m.predict_encoded(data, tta=False)  # both models on the same inputs, without test-time views
        if m.multi_label:
            old = len(start.classes)  # the new model's first labels are the bundle's
            s = multilabel_metrics(y, probs[:, :old], start.classes, m.label_thresholds()[:old].tolist())
            out[when] = {"map": s["map"], "micro_f1": s["micro_f1"], "macro_f1": s["macro_f1"]}
            out["multi_label"] = True
        else:
            s = classification_metrics(y, probs, m.classes, m.decide(probs))
            out[when] = {"accuracy": s["accuracy"], "balanced_accuracy": s["balanced_accuracy"],
                         "macro_f1": s["macro_f1"]}
    # medical models are chosen by balanced accuracy (imbalanced classes): so is what they forgot
    key = "map" if model.multi_label else "balanced_accuracy" if start.model.clinical else "accuracy"
    out["metric"] = key
    before, after = out["before"][key], out["after"][key]  # mAP is None where no label is both present and absent
    out["forgotten"] = before - after if before is not None and after is not None else None
    return out


def after_training(start: StartPoint | None, model: Any, settings: Any, options: Any,
                   timings: dict[str, float]) -> dict[str, Any] | None:
    """``metrics["continued"]`` of a run from a bundle (None for any other run): the start, what was added, and
    (``--old-test``) what was forgotten, its scoring timed as ``timings["old_test_s"]``."""
    if start is None:
        return None
    t = time.monotonic()
    out = record(start, settings) | {"forgetting": forgetting(start, model, settings, options)}
    timings["old_test_s"] = time.monotonic() - t
    return out


def keep_lineage(model: Any, start: StartPoint | None, continued: dict[str, Any] | None) -> None:
    """What the new bundle keeps of a run from a bundle: its ``lineage`` and, beside its scores, ``continued``."""
    if start is not None:
        model.meta["lineage"] = lineage(start)
        model.meta["metrics"]["continued"] = continued


def record(start: StartPoint, settings: Any) -> dict[str, Any]:
    """What ``metrics.json`` says about the start: the bundle, the classes it brought and those added, the replay."""
    return {"init_from": str(start.folder), "bundle_classes": start.classes, "new_classes": start.new_classes,
            "missing_from_new_data": start.missing,
            "replay": ({"data": str(settings.replay), "fraction": settings.replay_fraction, "per_class": start.replayed,
                        "examples": start.replayed_examples, "to_validation": start.replayed_to_val}
                       if settings.replay is not None else None),
            "l2sp": settings.strategy_options.get("l2sp")}


def lineage(start: StartPoint) -> list[dict[str, Any]]:
    """The new bundle's ancestry: the bundle it started from (where it was, a hash of its weights, its backbone,
    classes, strategy, data and scores), then that bundle's own lineage (up to ``MAX_LINEAGE`` bundles in all)."""
    from ..bundle.format import MAX_LINEAGE

    c = start.config

    def mapping(v: Any) -> dict[str, Any]:
        return v if isinstance(v, dict) else {}

    m = mapping(c.get("metrics"))
    data = mapping(m.get("data"))
    scored = "test" if m.get("test") else "val"
    s = mapping(m.get(scored))
    entry = {
        "bundle": str(start.folder.resolve()),
        "weights_sha256": file_digest(start.folder / "model.safetensors")[:16],
        "transferkit_version": c.get("transferkit_version"),
        "backbone": mapping(c.get("backbone")).get("name"),
        "classes": c.get("labels"),
        "strategy": m.get("strategy"),
        "data": {k: data.get(k) for k in ("train", "val", "test", "split", "train_per_class") if k in data},
        "scores": {"on": "cross-validation" if scored == "val" and m.get("estimate") else scored,
                   **{k: s[k] for k in ("accuracy", "macro_f1", "micro_f1", "map", "map_50") if k in s}},
    }
    earlier = c.get("lineage") if isinstance(c.get("lineage"), list) else []
    return [entry, *earlier][:MAX_LINEAGE]
