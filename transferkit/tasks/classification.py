"""What every classification task shares once a strategy has trained: the model built from the result, its
scores on validation (or out of fold) and test, the scratch and classical baselines, and the run folder.

Image, medical, text and audio tasks differ before training (reading, encoding, batches) and in a few hooks here:
:meth:`ClassificationTask.calibrate` (medical: temperature and operating point),
:meth:`ClassificationTask.data_summary` and :meth:`ClassificationTask.backbone_summary`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TransferkitError
from .base import Prepared, RunSettings, Task, run_record

BALANCE = ("weights", "sampler", "none")
# the largest class this many times the smallest (multi-label: in examples carrying each label): class weights go on
# unless --balance says otherwise, and models are chosen by balanced accuracy (multi-label: macro-F1)
IMBALANCE_RATIO = 3.0


@dataclass
class LabelOptions:
    """What every classifier's labels may need: several per example, a balance between rare and common classes,
    and where a multi-label model says yes."""

    label_sep: str | None = field(default=None, metadata={
        "help": 'Multi-label tables: the separator of a cell\'s labels, e.g. "|" for "cat|dog" (JSONL lists need '
                'none).'})
    balance: str | None = field(default=None, metadata={
        "help": "Class imbalance: weights (class-weighted loss), sampler (classes drawn equally often) or none; "
                f"default: weights when the largest class has over {IMBALANCE_RATIO:g}x the smallest's examples "
                "(medical: always), else none."})
    thresholds: str | float | None = field(default=None, metadata={
        "help": 'Multi-label: "tuned" (each label\'s cut maximises its F1 on validation or out-of-fold '
                'predictions; the default) or one probability for every label, e.g. 0.5.'})

    def __post_init__(self) -> None:
        if self.balance is not None and self.balance not in BALANCE:
            raise TransferkitError(f"Balance {self.balance!r} is unknown: choose weights, sampler or none.")
        if self.label_sep is not None and (not isinstance(self.label_sep, str) or not self.label_sep
                                           or any(c in self.label_sep for c in "\r\n")):
            raise TransferkitError(f"label_sep {self.label_sep!r} cannot separate the labels of one cell: give the "
                                   'characters between them, e.g. "|" or " ".')
        if self.thresholds is not None:
            self.thresholds = parse_thresholds(self.thresholds)


def parse_thresholds(value: Any) -> str | float:
    """``"tuned"`` or one probability strictly between 0 and 1 (a string such as ``"0.5"`` is read as one)."""
    if isinstance(value, str) and value.strip().lower() == "tuned":
        return "tuned"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TransferkitError(f"thresholds {value!r} is neither tuned nor a probability: give tuned or a number "
                               "such as 0.5.") from None
    if not 0 < number < 1:  # NaN fails too; 0 and 1 would make every label always or never present
        raise TransferkitError(f"thresholds {value!r} is out of range: give tuned, or a probability above 0 and below "
                               "1 (one cut for every label), such as 0.5.")
    return number


class ClassificationTask(Task):
    """A classifier on a pretrained backbone; see :class:`~transferkit.tasks.base.Task`."""

    balanced_choice = False  # always choose epochs and models by balanced accuracy (medical)
    default_balance: str | None = None  # the balance without --balance (medical: "weights"); None: by the data

    # -- hooks ------------------------------------------------------------------------------------------------
    def calibrate(self, model: Any, probs: dict, targets: dict, prepared: Prepared, options: Any, train: Any,
                  out_of_fold: bool) -> dict[str, Any] | None:
        """Fit what the model needs on validation before scoring (medical: calibration and threshold) and return
        what the report shows about it; None when there is nothing to fit."""
        return None

    def data_summary(self, prepared: Prepared, multi_label: bool) -> dict[str, Any]:
        summary = prepared.splits.summary()
        summary["skipped"] = sum(len(d.skipped) for d in prepared.encoded.values())
        return summary

    def backbone_summary(self, backbone: Any) -> dict[str, Any]:
        return {**backbone.spec.to_dict(), "preprocess": backbone.preprocess.to_dict(),
                "num_features": backbone.num_features}

    def input_summary(self, metrics: dict[str, Any]) -> str:
        """How the backbone read the examples, for the report (e.g. "224 px input")."""
        return "inputs as the backbone's preprocessing reads them"

    def model_meta(self, options: Any) -> dict[str, Any]:
        """What the bundle keeps from this task's options: how multi-label cells were split, so that ``evaluate``
        reads them the same way."""
        sep = getattr(options, "label_sep", None)
        return {"label_sep": sep} if sep is not None else {}

    def labelled_like(self, model: Any, ds: Any, source: Any) -> Any:
        """Labelled files for ``model``: one label per row read as a one-label set for a multi-label model, several
        labels refused for a single-label one, classes the model lacks refused."""
        if model.multi_label and not ds.multi_label:
            ds = ds.subset(range(len(ds)))
            ds.labels, ds.multi_label = [(y,) for y in ds.labels], True
        elif ds.multi_label and not model.multi_label:
            raise TransferkitError(f"{source} gives several labels per example; this model gives one (it was trained "
                                   "single-label): give one label per row.")
        model.check_labels(set(ds.label_names()), source)
        return ds

    clinical_scores = False  # scores AUROC, sensitivity, specificity... (medical)

    def default_metric(self, classes: list[str]) -> str:
        """What ``compare`` ranks strategies by when asked for ``auto``."""
        return "accuracy"

    def baseline_preprocess(self, backbone: str | None, options: Any) -> Any:
        """The preprocessing the classical baseline reads images with (the backbone's crop, window...), or None."""
        return None

    def classical_data(self, sets: dict[str, Any], classes: list[str], preprocess: Any = None,
                       skip_bad: bool = False) -> dict[str, tuple[Any, Any]]:
        """Example sets -> ``{name: (data, targets)}`` as the classical baseline takes them, without a backbone
        (see :func:`transferkit.strategies.classical.decode_for_baseline`)."""
        from ..strategies.classical import decode_for_baseline

        return decode_for_baseline(self.baseline_kind(), sets, classes, image_preprocess=preprocess,
                                   skip_bad=skip_bad)

    def baseline_kind(self) -> str:
        """Which classical baseline suits these data (:class:`~transferkit.strategies.classical.ClassicalBaseline`)."""
        return self.modality

    def before_training(self, train: Any, prepared: Prepared, settings: RunSettings,
                        timings: dict[str, float]) -> None:
        """With ``scratch_baseline``, the classical baseline beside it: fitted and predicting now, since it does
        not depend on the model, so that the budget is planned with its time already spent."""
        if settings.scratch_baseline:
            prepared.classical = classical_predictions(self.baseline_kind(), prepared.encoded, train, settings.seed)
            timings["classical_baseline_s"] = prepared.classical["seconds"]

    def scoring_seconds(self, train: Any, prepared: Prepared) -> float:
        """The backbone timed on a few training examples, scaled to the validation and test rows scored after
        training (audio: every window of every recording), test-time views included."""
        from ..strategies.base import sample_batch
        from .budget import seconds_per_row

        rows = sum(self.rows(d) for name, d in prepared.encoded.items() if name != "train")
        if not rows:
            return 0.0
        if prepared.splits.val is not None and self.has_tta:  # test-time views judged on validation and test
            rows *= 1 + len(self.tta_views(prepared.encoded["val"]))
        n = min(16, self.rows(train.train))
        return rows * seconds_per_row(train.backbone, sample_batch(train, n), n, train.accelerator.device,
                                     train.accelerator.autocast)

    def judge_tta(self, model: Any, probs: dict, targets: dict, prepared: Prepared, settings: RunSettings,
                  train: Any, out_of_fold: bool) -> dict[str, Any] | None:
        """Test-time augmentation, kept in ``model`` (and ``probs`` replaced by its predictions) only when it scores
        higher on validation by the metric that chose the model (accuracy, balanced accuracy, mAP); test scores
        with and without are recorded beside, never used to decide. None where the task has no test-time views;
        not judged without a validation split (the out-of-fold models are gone)."""
        from ..strategies.base import probs_score

        if not self.has_tta:
            return None
        if out_of_fold:
            return {"judged": False, "kept": False}
        with_tta = {n: model.predict_encoded(prepared.encoded[n], precision=settings.precision, tta=True)
                    for n in probs}
        scores = {n: {"without": probs_score(probs[n], targets[n], train.balanced),
                      "with": probs_score(with_tta[n], targets[n], train.balanced)} for n in probs}
        kept = scores["val"]["with"] > scores["val"]["without"]
        if kept:
            model.tta = True
            probs.update(with_tta)
        metric = "map" if model.multi_label else "balanced_accuracy" if train.balanced else "accuracy"
        return {"judged": True, "kept": kept, "metric": metric, "views": len(self.tta_views(prepared.encoded["val"])),
                **scores}

    def train_task(self, prepared: Prepared, settings: RunSettings, options: Any, accelerator: Any,
                   deadline: float | None, work_dir: Path | None) -> Any:
        """The base task's, with the class balance chosen (:func:`choose_balance`, said in one line when the data
        chose it); a balanced run selects epochs and models by balanced accuracy (multi-label: mAP either way)."""
        task = super().train_task(prepared, settings, options, accelerator, deadline, work_dir)
        balance, why = choose_balance(task.class_counts().tolist(), prepared.classes, getattr(options, "balance", None),
                                      self.default_balance)
        if why:
            from ..console import info

            info(f"{why}: a class-weighted loss, and models chosen by balanced accuracy (multi-label: mAP); --balance "
                 "none turns this off, --balance sampler draws classes equally often instead")
        return dataclasses.replace(task, balance=balance, balanced=self.balanced_choice or balance != "none")

    def check_prepared(self, prepared: Prepared, settings: RunSettings, options: Any) -> None:
        multi = getattr(prepared.splits.train, "multi_label", False)
        if getattr(options, "thresholds", None) not in (None, "tuned") and not multi:
            raise TransferkitError("--thresholds sets where a multi-label model says yes to each label; these data "
                                   "give one label per example: leave it out.")
        super().check_prepared(prepared, settings, options)

    def sampler(self, task: Any) -> Any:
        """``balance="sampler"``: every class drawn equally often (multi-label: every example's rarest label;
        audio: per window, so a class of long recordings is not drawn more)."""
        if task.balance != "sampler":
            return None
        from ..data.folds import label_strata
        from ..engine.sampling import EpochBalancedSampler

        y = self.row_targets(task.train)
        return EpochBalancedSampler(label_strata(y.numpy()) if y.ndim == 2 else y, task.seed)

    def row_targets(self, data: Any) -> Any:
        """The target of each row the network sees (audio: each window's recording's)."""
        return data.targets

    # -- after training ---------------------------------------------------------------------------------------
    def build_model(self, network: Any, prepared: Prepared, files: dict[str, bytes] | None = None) -> Any:
        from ..bundle.model import TransferModel

        multi_label = prepared.encoded["train"].targets.ndim == 2
        return TransferModel(network.cpu().eval(), prepared.classes, multi_label=multi_label, files=files, task=self)

    def finish(self, result: Any, prepared: Prepared, settings: RunSettings, options: Any, train: Any,
               extras: dict[str, Any]) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        from ..evaluation.metrics import classification_metrics, confidently_wrong, multilabel_metrics
        from ..evaluation.report import chance_text, train_val_gap

        timings = extras["timings"]
        dec, splits, classes = prepared.encoded, prepared.splits, prepared.classes
        baseline_model = self._scratch(settings, prepared, train, extras) if settings.scratch_baseline and \
            not result.strategy.startswith("scratch") else None
        t = time.monotonic()
        model = self.build_model(result.model, prepared, result.files)
        multi_label = model.multi_label
        probs = {n: model.predict_encoded(d, precision=settings.precision) for n, d in dec.items() if n != "train"}
        targets = {name: dec[name].targets.numpy() for name in probs}
        tta = self.judge_tta(model, probs, targets, prepared, settings, train, result.cv is not None)
        # what each scored set's rows are (the cross-validated estimate scores the training examples)
        scored_data, scored_source = {n: dec[n] for n in probs}, {n: getattr(splits, n) for n in probs}
        if result.cv is not None:  # no validation split: the out-of-fold predictions stand where validation would
            probs["val"], targets["val"] = result.cv.probs.astype(np.float32), dec["train"].targets.numpy()
            scored_data["val"], scored_source["val"] = dec["train"], splits.train
        scored = "test" if "test" in probs else "val"
        calibration = self.calibrate(model, probs, targets, prepared, options, train, result.cv is not None)
        uncalibrated = probs
        if calibration is not None:
            probs = {name: model.calibrated(p) for name, p in probs.items()}
        metrics_extra: dict[str, Any] = {"tta": tta} if tta is not None else {}
        why = choose_balance(train.class_counts().tolist(), classes, getattr(options, "balance", None),
                             self.default_balance)[1]
        metrics_extra["balance"] = {"balance": train.balance, "balanced": train.balanced, "why": why}
        if multi_label:
            metrics_extra["thresholds"] = choose_thresholds(model, probs["val"], targets["val"],
                                                            getattr(options, "thresholds", None), result.cv is not None)
            scores = {name: multilabel_metrics(targets[name], p, classes, model.threshold) for name, p in probs.items()}
        else:
            scores = {name: classification_metrics(targets[name], p, classes, model.decide(p))
                      for name, p in probs.items()}
        binary_clinical = False
        if calibration is not None:
            from ..evaluation.clinical import clinical_metrics

            binary_clinical = len(classes) == 2
            for name, p in probs.items():
                scores[name]["clinical"] = clinical_metrics(targets[name], p, classes, model.clinical["positive"],
                                                            model.clinical["threshold"], seed=settings.seed)
        if baseline_model is not None:
            cv_scored = scored == "val" and result.cv is not None
            base_probs = baseline_model.meta["cv_probs"] if cv_scored else \
                baseline_model.predict_encoded(dec[scored], precision=settings.precision)
            if base_probs is None:  # cannot happen: the baseline cross-validates whenever the model did
                raise TransferkitError("the scratch baseline has no cross-validated predictions to compare with")
            metrics_extra["scratch_baseline"] = scratch_comparison(
                baseline_model, base_probs, targets[scored], scores[scored], scored, classes, multi_label,
                timings["scratch_baseline_s"], binary_clinical)
        metrics_extra["label_noise"] = label_noise(result.cv, targets.get("val"), uncalibrated.get("val"), classes,
                                                   example_names(scored_data["val"], scored_source["val"]))
        if prepared.classical is not None:  # the non-deep baseline beside scratch, fitted before training
            classical = classical_comparison(prepared.classical, targets[scored], scores[scored], classes,
                                             multi_label, binary_clinical)
            metrics_extra["classical_baseline"] = classical
        timings["evaluate_s"] = time.monotonic() - t
        explained: list = []
        if settings.explain:
            t = time.monotonic()
            metrics_extra["explanations"], explained = self.explanations(
                model, scored_data[scored], targets[scored], probs[scored], settings.seed,
                "training examples (out-of-fold predictions; the final model, which trained on them, drew the maps)"
                if scored == "val" and result.cv is not None else f"{scored} set")
            timings["explain_s"] = time.monotonic() - t
        from .continued import after_training, keep_lineage

        continued = after_training(prepared.start, model, settings, options, timings)  # --init-from runs only
        if continued is not None:
            metrics_extra["continued"] = continued
        timings["total_s"] = time.monotonic() - extras["t_start"]

        history = result.history.to_dict()
        gap = train_val_gap(history, scores["val"] if result.cv is not None else None, train.balanced)
        for e in history["epochs"]:  # seconds since training began (time-to-accuracy); None before a resume
            done = e.pop("finished_at", 0.0) - extras["wall_start"]
            e["elapsed_s"] = round(done, 2) if done >= 0 else None
        metrics = {
            "task": self.run_label or self.bundle_task,
            "strategy": result.strategy,
            "backbone": self.backbone_summary(prepared.backbone),
            "data": self.data_summary(prepared, multi_label),
            "val": scores["val"],
            "test": scores.get("test"),
            "estimate": estimate(result.cv, scores["val"], multi_label, train.balanced)
            if result.cv is not None else None,
            "confidently_wrong": confidently_wrong(targets[scored], probs[scored], classes,
                                                   example_names(scored_data[scored], scored_source[scored]),
                                                   getattr(scored_data[scored], "texts", None),
                                                   y_pred=None if multi_label else model.decide(probs[scored]),
                                                   threshold=model.label_thresholds() if multi_label else 0.5),
            "history": history,
            "train_val_gap": gap,
            **run_record(result, train, settings, timings, extras.get("budget")),
        }
        metrics["at_chance"] = chance_text(scores[scored], len(classes),
                                           "cross-validated" if scored == "val" and result.cv is not None else scored)
        metrics["unit"], metrics["inputs"] = self.unit, self.input_summary(metrics)
        if calibration is not None:
            metrics["clinical"] = calibration
        if extras.get("ranking") is not None:
            ranking = extras["ranking"]
            metrics["backbone_ranking"] = {"ranked_by": ranking["ranked_by"], "chosen": ranking["ranking"][0],
                                           "rows": [{k: r[k] for k in ("backbone", "logme", "leep", "nce", "hscore",
                                                                       "knn")} for r in ranking["rows"]]}
        metrics |= metrics_extra
        model.meta = {"metrics": {k: metrics[k] for k in ("strategy", "val", "test", "estimate", "train_val_gap",
                                                          "trainable_params", "data", "backbone_ranking",
                                                          "scratch_baseline", "classical_baseline")
                                  if metrics.get(k) is not None}}
        if model.clinical is not None:
            model.meta["clinical"] = model.clinical
        model.meta |= self.model_meta(options)
        model.meta |= self.recorded_files(prepared)
        keep_lineage(model, prepared.start, continued)
        # for the report's plots (not saved in metrics.json)
        plots = {"set": scored, "y": targets[scored], "probs": probs[scored], "uncalibrated": uncalibrated[scored],
                 "out_of_fold": scored == "val" and result.cv is not None, "explanations": explained}
        return model, metrics, plots

    def explanations(self, model: Any, data: Any, y: np.ndarray, probs: np.ndarray, seed: int,
                     where: str) -> tuple[dict[str, Any], list]:
        """The report's explanations of ``model`` on the scored set (:func:`transferkit.evaluation.explain.
        explain_scored` with this task's :meth:`explainer`): what ``metrics.json`` records, and the examples with
        their maps for the figure. A model this task cannot explain records why, in one line."""
        from ..evaluation.explain import explain_scored

        try:
            explainer = self.explainer(model)
        except TransferkitError as err:
            return {"available": False, "why": str(err)}, []
        multi = model.multi_label
        try:
            record, explained = explain_scored(explainer, data, y, probs, None if multi else model.decide(probs),
                                               model.classes, model.label_thresholds() if multi else None, seed)
        except Exception as err:  # the report's extra: a network it cannot explain must not cost the trained model
            from ..console import warn

            why = f"explaining failed ({type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]})"
            warn(f"{why}; the model and the rest of the report are kept")
            return {"available": False, "why": why}, []
        if explainer.kind == "tokens":  # the report lists words: keep them in the record (no figure)
            from ..evaluation.explain_plots import top_words

            record["texts"] = [{"class": model.classes[r["class"]], "correct": r["correct"], "label": e.label,
                                "probability": round(e.probability, 4), "words": top_words(e)}
                               for r, e in explained]
        return {"available": True, "on": where, "kind": explainer.kind, **record}, explained

    def write(self, out: Path, model: Any, metrics: dict[str, Any], prepared: Prepared,
              plots: dict[str, Any]) -> dict[str, str]:
        from ..evaluation.report import write_run_report

        model.save(out / "model")
        explained = plots.get("explanations")
        if explained and explained[0][1].kind != "tokens":  # drawn before the report, which shows it
            from ..evaluation.explain_plots import explanations_png

            t = time.monotonic()
            e = metrics["explanations"]
            deletion = e.get("deletion") or {}
            explanations_png(explained, prepared.classes, out / "explanations.png",
                             f"What the model looks at ({e['on']}; {e['method']})"
                             + (f"\ndeletion score {deletion['score']:+.3f} (area under the probability curve: "
                                f"map order {deletion['map_auc']:.3f}, random order {deletion['random_auc']:.3f})"
                                if deletion else ""))
            metrics["timings"]["explain_figure_s"] = time.monotonic() - t  # after total_s: the report's own time
        files = write_run_report(out, metrics, prepared.classes)
        if (out / "explanations.png").exists():
            files["explanations"] = str(out / "explanations.png")
        self.write_extra(out, model, prepared, plots)
        return files

    def write_extra(self, out: Path, model: Any, prepared: Prepared, plots: dict[str, Any]) -> None:
        """More plots for the run folder (medical: the ROC curve), from the scored set's ``plots``."""

    def _scratch(self, settings: RunSettings, prepared: Prepared, train: Any, extras: dict[str, Any]) -> Any:
        """The same architecture trained from random weights on the same splits, with the same training time as
        the strategy was given (half of the budget's training time each; see :mod:`transferkit.tasks.budget`)."""
        t = time.monotonic()
        plan = extras.get("budget")
        base_task = dataclasses.replace(train, deadline=t + plan.scratch_s if plan is not None else None,
                                        work_dir=train.work_dir / "scratch" if train.work_dir is not None else None)
        opts = settings.strategy_options
        epochs = {"epochs": opts["epochs"]} if "epochs" in opts else {}
        base = self.create_strategy("scratch", prepared.backbone, epochs).fit(base_task)
        model = self.build_model(base.model, prepared)
        model.meta["history"] = base.history.to_dict()
        model.meta["cv_probs"] = base.cv.probs if base.cv is not None else None
        extras["timings"]["scratch_baseline_s"] = time.monotonic() - t
        return model


def label_noise(cv: Any, y: np.ndarray | None, probs: np.ndarray | None, classes: list[str],
                names: list[str]) -> dict[str, Any]:
    """The training examples most likely mislabelled (confident learning, :mod:`transferkit.evaluation.noise`) from
    the out-of-fold probabilities of a cross-validated run; a run with a validation split has none (a model's own
    probabilities on the examples it trained on have fitted their labels, right or wrong), and says so."""
    if cv is None or y is None or probs is None:
        return {"checked": False, "why": "needs out-of-fold predictions: runs on small data without a validation "
                                         "split have them (or give --val-fraction 0)"}
    from ..evaluation.noise import label_noise_summary

    return {"checked": True, **label_noise_summary(y, probs, classes, names, k=20)}


def choose_thresholds(model: Any, probs: np.ndarray, y: np.ndarray, rule: str | float | None,
                      out_of_fold: bool) -> dict[str, Any]:
    """Set a multi-label ``model``'s threshold: each label's cut maximising its F1 on validation (or on the
    out-of-fold predictions of every training example), or one number for all (``rule``); return what the report
    shows. Scores on the set the cuts were tuned on lean optimistic; a test set's do not."""
    from ..evaluation.metrics import tune_label_thresholds

    rule = "tuned" if rule is None else rule
    tuned_on = None
    if rule == "tuned":
        model.threshold = tune_label_thresholds(y, probs)
        tuned_on = "out-of-fold predictions" if out_of_fold else "validation"
    else:
        model.threshold = float(rule)
    return {"rule": rule, "tuned_on": tuned_on,
            "per_label": {c: round(float(t), 4) for c, t in zip(model.classes, model.label_thresholds(), strict=True)}}


def choose_balance(counts: list[int], classes: list[str], given: str | None,
                   default: str | None = None) -> tuple[str, str | None]:
    """The run's class balance and, when the data chose it, why (for the console and the report).

    ``given`` (``--balance``) wins, then the task's ``default`` (medical: weights). Otherwise class weights go on
    when the largest class has more than :data:`IMBALANCE_RATIO` times the smallest's training examples (multi-label:
    examples carrying each label), else none.

    >>> choose_balance([200, 10], ["a", "b"], None)[0], choose_balance([20, 10], ["a", "b"], None)
    ('weights', ('none', None))
    """
    if given is not None:
        return given, None
    if default is not None:
        return default, None
    present = [(n, c) for n, c in zip(counts, classes, strict=True) if n > 0]
    if len(present) < 2:
        return "none", None
    (most, big), (least, small) = max(present), min(present)
    if most <= IMBALANCE_RATIO * least:
        return "none", None
    return "weights", f"imbalanced classes: {big!r} {most} vs {small!r} {least} training examples, {most / least:.0f}:1"


def scratch_comparison(baseline: Any, probs: np.ndarray, y: np.ndarray, scored_metrics: dict, part: str,
                       classes: list[str], multi_label: bool, seconds: float, binary_medical: bool) -> dict[str, Any]:
    """The scratch baseline scored on the same set as the model: its scores, and the model's lead over it.

    Accuracy (mAP for multi-label: no threshold, so the model's tuned ones give it no edge) is compared; for
    two-class medical data AUROC, which needs no threshold (the model's threshold and calibration were tuned for it,
    the baseline's were not). ``resolved`` says whether
    the lead is larger than half the test set's 95% interval."""
    from ..evaluation.metrics import classification_metrics, multilabel_metrics
    from ..evaluation.report import train_val_gap

    m = multilabel_metrics(y, probs, classes) if multi_label else classification_metrics(y, probs, classes)
    key = "map" if multi_label else "accuracy"  # mAP needs no threshold: the model's tuned ones give it no edge
    score, model_score, ci = m[key], scored_metrics[key], m.get(f"{key}_ci")
    model_ci = scored_metrics.get(f"{key}_ci")
    if binary_medical:
        from ..evaluation.clinical import auroc

        c = scored_metrics["clinical"]
        k = classes.index(c["positive"])
        key, score, model_score, ci, model_ci = "auroc", auroc(y == k, probs[:, k]), c["auroc"], None, \
            c.get("auroc_ci")
    history = baseline.meta["history"]
    lead = model_score - score if score is not None and model_score is not None else None
    half = (model_ci[1] - model_ci[0]) / 2 if model_ci else None
    # a cross-validated baseline's final run has no validation scores: its out-of-fold ones stand in
    unscored = history["epochs"][history["best_epoch"]]["val_acc"] is None
    return {"set": part, "metric": key, "score": score, "score_ci": ci, "macro_f1": m["macro_f1"],
            "model_score": model_score, "lead": lead,
            "resolved": None if lead is None or half is None else abs(lead) > half,
            "half_width": half, "seconds": round(seconds, 1), "epochs": len(history["epochs"]),
            "stopped": history["stopped"],
            "train_val_gap": train_val_gap(history, m if unscored else None)["accuracy"]}


def classical_predictions(kind: str, dec: dict, task: Any, seed: int) -> dict[str, Any]:
    """The classical baseline (:class:`~transferkit.strategies.classical.ClassicalBaseline`) predicting the set the
    model will be scored on: out of fold on the model's folds when there is no validation split and no test split
    (the model's score is then cross-validated), else trained on the training split and predicting the test split
    (or validation). It does not depend on the model, so it runs before training and the budget knows its time."""
    from ..strategies.classical import ClassicalBaseline

    t = time.monotonic()
    k = len(task.classes)
    part = "test" if "test" in dec else "val"
    out_of_fold = part == "val" and task.cross_validated
    if out_of_fold:
        probs = np.zeros((len(dec["train"]), k))
        for tr, va in task.folds():
            base = ClassicalBaseline(kind, seed=seed).fit(dec["train"].subset(tr), num_classes=k)
            probs[va] = base.predict_proba(dec["train"].subset(va))
    else:
        base = ClassicalBaseline(kind, seed=seed).fit(dec["train"], num_classes=k)
        probs = base.predict_proba(dec[part])
    return {"probs": probs, "name": base.name_, "set": "cross-validated" if out_of_fold else part,
            "seconds": round(time.monotonic() - t, 1)}


def classical_comparison(classical: dict[str, Any], y: np.ndarray, scored_metrics: dict, classes: list[str],
                         multi_label: bool, binary_medical: bool) -> dict[str, Any]:
    """The classical baseline's predictions (:func:`classical_predictions`) scored like the model on the same set;
    ``wins`` says whether it beat the model."""
    from ..evaluation.metrics import classification_metrics, multilabel_metrics

    probs = classical["probs"]
    m = multilabel_metrics(y, probs, classes) if multi_label else classification_metrics(y, probs, classes)
    key = "map" if multi_label else "accuracy"  # mAP needs no threshold: the model's tuned ones give it no edge
    score, model_score, ci = m[key], scored_metrics[key], m.get(f"{key}_ci")
    if binary_medical:
        from ..evaluation.clinical import auroc

        c = scored_metrics["clinical"]
        j = classes.index(c["positive"])
        key, score, model_score, ci = "auroc", auroc(y == j, probs[:, j]), c["auroc"], None
    model_ci = scored_metrics.get(f"{key}_ci") if key != "auroc" else scored_metrics["clinical"].get("auroc_ci")
    lead = model_score - score if score is not None and model_score is not None else None
    half = (model_ci[1] - model_ci[0]) / 2 if model_ci else None
    return {"name": classical["name"], "set": classical["set"], "seconds": classical["seconds"], "metric": key,
            "score": score,
            "score_ci": ci, "macro_f1": m["macro_f1"], "model_score": model_score, "lead": lead,
            "wins": lead is not None and lead < 0,
            "resolved": None if lead is None or half is None else abs(lead) > half, "half_width": half}


def estimate(cv: Any, scores: dict[str, Any], multi_label: bool, balanced: bool = False) -> dict[str, Any]:
    """What the report says about a cross-validated estimate: how it was made, its score and interval (the fold
    scores are balanced accuracy for medical runs, which choose by it)."""
    key = "map" if multi_label else "balanced_accuracy" if balanced and "balanced_accuracy" in scores else \
        "accuracy"
    folds = np.asarray(cv.fold_scores, dtype=float)
    return {"kind": "cross-validation", **cv.to_dict(), "metric": key, "score": scores[key],
            "score_ci": scores.get(f"{key}_ci"), "n": scores["n"],
            "fold_mean": float(folds.mean()), "fold_std": float(folds.std(ddof=1)) if len(folds) > 1 else 0.0}


def example_names(encoded: Any, source: Any) -> list[str]:
    """Where each scored example came from: a text's file/row, an image's path (or its position for arrays)."""
    if hasattr(encoded, "names"):
        return list(encoded.names)
    items = getattr(source, "items", None)
    if items is None:  # a task's own data without file names: positions
        return [f"#{i}" for i in kept_positions(encoded)]
    return [f"array #{i}" if hasattr(items[i], "shape") else str(items[i]) for i in encoded.kept]


def kept_positions(encoded: Any) -> list[int]:
    """Each encoded example's position in its source (unreadable files skipped leave gaps)."""
    return list(encoded.kept) if getattr(encoded, "kept", None) else list(range(len(encoded)))


def announce(prepared: Prepared, shape: str) -> None:
    """One console line: the splits' sizes and the backbone."""
    from ..console import info

    splits, bb = prepared.splits, prepared.backbone
    val = f"{len(splits.val)} val" if splits.val is not None else "no val (cross-validated)"
    info(f"data: {len(splits.train)} train / {val} / {len(splits.test) if splits.test else 0} test, "
         f"{len(splits.classes)} classes; backbone {bb.spec.name} ({shape})")


def existing_parts(splits: Any, parts: tuple[str, ...] = ("train", "val", "test")) -> list[tuple[str, Any]]:
    """The splits that exist, among ``parts`` (``rank`` reads only train and val)."""
    return [(name, ds) for name, ds in (("train", splits.train), ("val", splits.val), ("test", splits.test))
            if ds is not None and name in parts]
