"""Medical imaging: image classification with patient-level splits, a class-weighted loss, models chosen by
balanced accuracy, calibrated probabilities, an operating threshold and clinical scores (AUROC, sensitivity,
specificity, PPV/NPV with intervals, calibration error, ``roc.png``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TransferkitError
from .base import Prepared, RunSettings, data_kind
from .image import ImageOptions, ImageTask


@dataclass
class MedicalOptions(ImageOptions):
    """Medical settings: who the patients are, which class is the finding, where to decide, how to balance."""

    patient_column: str | None = field(default=None, metadata={
        "help": "Manifest column naming the patient (default: patient_id, or the DICOM PatientID, hashed)."})
    positive: str | None = field(default=None, metadata={"help": "The finding's class (default: the rarer of two)."})
    threshold: str | float | None = field(default=None, metadata={
        "help": 'Operating point: "youden" (default), "sensitivity=0.95", "specificity=0.9" or a probability.'})

    def __post_init__(self) -> None:
        super().__post_init__()
        from ..evaluation.clinical import parse_threshold_rule

        parse_threshold_rule(self.threshold)


class MedicalTask(ImageTask):
    name = "medical"
    title = "medical image classification"
    bundle_task = "image-classification"  # the bundle is an image classifier that carries its clinical settings
    run_label = "medical-classification"
    Options = MedicalOptions
    sniff_order = 40
    plural = "medical images (modality='medical')"
    patients = True
    resize = "pad"  # the whole image, padded to a square, never cropped (a finding at the edge stays)
    balanced_choice = True
    default_balance = "weights"

    def matches_bundle(self, config: dict[str, Any]) -> bool:
        # an image classifier that carries its clinical settings
        return config.get("task") == self.bundle_task and bool(config.get("clinical"))

    def sniff(self, data: Any, hints: dict[str, Any]) -> bool:
        return data_kind(data, hints) == "medical"

    def check_prepared(self, prepared: Prepared, settings: RunSettings, options: MedicalOptions) -> None:
        """Before any training: a wrong class name or option must not cost the whole run."""
        from ..evaluation.clinical import choose_positive

        splits = prepared.splits
        if getattr(splits.train, "multi_label", False):  # several findings per image: each scored on its own
            given = [f"--{k}" for k in ("positive", "threshold") if getattr(options, k) is not None]
            if given:
                raise TransferkitError(f"{' and '.join(given)} choose one finding's operating point; these images "
                                       "carry several findings each (multi-label), whose thresholds are tuned per "
                                       "finding: leave it out, or give --thresholds 0.5 for one cut for all.")
            super().check_prepared(prepared, settings, options)
            return
        choose_positive(splits.classes, splits.train.counts(), options.positive)
        if options.threshold is not None and len(splits.classes) != 2:
            raise TransferkitError(f"threshold applies to two classes (a finding and its absence); these data have "
                                   f"{len(splits.classes)}.")
        super().check_prepared(prepared, settings, options)

    def train_task(self, prepared: Prepared, settings: RunSettings, options: MedicalOptions, accelerator: Any,
                   deadline: float | None, work_dir: Path | None) -> Any:
        import dataclasses

        from .classification import kept_positions

        task = super().train_task(prepared, settings, options, accelerator, deadline, work_dir)
        groups = getattr(prepared.splits.train, "groups", None)
        if groups is not None:  # folds keep a patient's images together
            groups = [groups[i] for i in kept_positions(prepared.encoded["train"])]
        return dataclasses.replace(task, groups=groups)

    clinical_scores = True

    def default_metric(self, classes: list[str]) -> str:
        # AUROC needs no threshold; with more classes, balanced accuracy (the prevalence does not win)
        return "auroc" if len(classes) == 2 else "balanced_accuracy"

    def baseline_kind(self) -> str:
        return "image"

    def calibrate(self, model: Any, probs: dict, targets: dict, prepared: Prepared, options: MedicalOptions,
                  train: Any, out_of_fold: bool) -> dict[str, Any]:
        """Calibrate on validation (undo the class weights' shift of the probabilities, then fit a temperature),
        tune the operating threshold there, and give all of it to ``model``; return what the report shows. Without
        a validation split, "validation" is the out-of-fold predictions of every training example.

        Several findings per image (multi-label): nothing here; each finding gets its own threshold as in every
        multi-label run, and per-finding AUROC and sensitivity (recall) are in the scores."""
        if model.multi_label:
            return None
        from ..console import warn
        from ..evaluation.clinical import (MIN_PER_CLASS_FOR_TEMPERATURE, apply_temperature, choose_positive,
                                           correct_prior, expected_calibration_error, fit_temperature,
                                           parse_threshold_rule, tune_threshold)

        classes, splits = prepared.classes, prepared.splits
        y_val = targets["val"]
        missing = sorted(set(classes) - {classes[i] for i in set(y_val.tolist())})
        if missing:
            warn(f"the validation set has no {', '.join(missing)}: the threshold stays at 0.5 and no temperature is "
                 "fitted; add patients of every class")
        pos = choose_positive(classes, splits.train.counts(), options.positive)
        # calibrate only where validation can check it (see MIN_PER_CLASS_FOR_TEMPERATURE: measured on ELPV)
        smallest = int(np.bincount(y_val, minlength=len(classes)).min())
        enough = smallest >= MIN_PER_CLASS_FOR_TEMPERATURE
        weights = None
        if train.balance in ("weights", "sampler") and enough:  # both raise each class's probability by 1/frequency
            counts = np.bincount(prepared.encoded["train"].targets.numpy(), minlength=len(classes)).clip(min=1)
            weights = (counts.sum() / (len(classes) * counts)).round(6).tolist()
        corrected = {name: correct_prior(p, weights) for name, p in probs.items()}
        temperature = fit_temperature(corrected["val"], y_val) if enough else 1.0
        rule = parse_threshold_rule(options.threshold)
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
        return {**model.clinical, "ece": ece}

    def input_summary(self, metrics: dict[str, Any]) -> str:
        pre = metrics["backbone"]["preprocess"]
        return (f"{super().input_summary(metrics)}, window {pre.get('window', 'auto')}, slices "
                f"{pre.get('slices', '2d')}, greyscale repeated into 3 channels")

    def write_extra(self, out: Path, model: Any, prepared: Prepared, plots: dict[str, Any]) -> None:
        from ..evaluation.clinical import roc_png

        if model.clinical is None:  # several findings per image: no one positive class to draw the curve of
            return
        where = "cross-validated" if plots["out_of_fold"] else plots["set"]
        roc_png(plots["y"], plots["probs"], prepared.classes, model.clinical["positive"], model.clinical["threshold"],
                out / "roc.png", plots["uncalibrated"], f"ROC ({where}, n={len(plots['y'])})")
