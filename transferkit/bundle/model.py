"""A trained model you can predict with, save, and load again: :class:`TransferModel`.

Bundle layout (``model/``)::

    model.safetensors   backbone + head tensors
    config.json         format, package version, task, backbone spec, head config, labels, preprocessing, metrics
    model_card.md       what the model does, its data, backbone and weights' origin, training, scores with 95%
                        intervals, known limitations (written from config.json)
    README.md           the same card under the Hugging Face Hub's metadata header: the folder is a hub model
                        repository (:mod:`.hub`)
    tokenizer/          (text) the backbone's tokenizer files
    encoder/config.json (text) the encoder's architecture
    adapter/            (lora) the adapter in peft's format, with the head beside it
    encoder/            (Hugging Face audio encoder) its config.json and preprocessor_config.json

Loading rebuilds the architecture from these files (no download of weights, no pickle) and fills it from
``model.safetensors``; predictions after reload equal those before. What differs between kinds of data (reading
raw inputs, the extra files, rebuilding the backbone) is the model's task's (:mod:`transferkit.tasks`): a bundle
names its task in ``config.json``, and the tasks register themselves as its readers (:mod:`.format`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..backbones.protocol import BackboneSpec
from ..errors import TransferkitError
from ..heads import Classifier, build_head
from ..heads.linear import class_probabilities
from ..io import atomic_dir
from .format import BUNDLE_FORMAT, FIX, read_config, reader_for, reader_named
from .weights import load_weights, rebuild


class TransferModel:
    """An image, text or audio classifier adapted by transferkit.

    Examples:

        >>> model = transferkit.fit("data/parts", strategy="linear")
        >>> model.predict(["a.jpg"], top_k=3)[0]["top"][0]
        {'label': 'scratch', 'probability': 0.93}
        >>> model.save("parts-model"); again = transferkit.load("parts-model")
        >>> news = transferkit.load("runs/news/model")          # a text model takes strings
        >>> news.predict(["Shares rose after the merger."])[0]["label"]
        'business'
        >>> transferkit.load("runs/commands/model").predict(["recording.wav"])[0]["windows"]   # audio: per file
        3

    Multi-label models return, per input, every label whose probability reaches its threshold: ``threshold`` is one
    number for all labels (0.5) or a list of one per label (tuned on validation by ``fit``).
    ``task`` is the :class:`~transferkit.tasks.Task` that reads its inputs (default: the registered task named by
    the backbone's modality).

    Attributes:
        classes: the labels, in the order of the model's outputs.
        metrics: after :func:`transferkit.fit`, everything the run's ``metrics.json`` holds (``metrics["test"]``, or
            ``metrics["estimate"]`` when the score was cross-validated).
        multi_label: one sigmoid per label (``predict`` returns every label over its threshold) instead of a softmax.
        threshold: multi-label models: one cut for all labels, or one per label.
        tta: whether ``predict`` averages test-time views (kept by ``fit`` only when it helped on validation).
        clinical: medical models: the positive class, the operating threshold, how it was chosen and the
            calibration temperature; None otherwise.
        meta: the bundle's ``config.json`` metadata: backbone, preprocessing, training settings, package version.
    """

    def __init__(self, classifier: Classifier, classes: list[str], meta: dict[str, Any] | None = None,
                 multi_label: bool = False, files: dict[str, bytes] | None = None, task: Any = None):
        self.classifier = classifier.eval()
        self.classes = list(classes)
        self.meta = meta or {}
        self.multi_label = bool(multi_label)
        self.threshold: float | list[float] = 0.5  # multi-label: one cut for all labels, or one per label
        self.tta = False  # predictions average test-time views (fit keeps it only when it helped on validation)
        self.files = dict(files or {})  # extra bundle files (e.g. adapter/), written as they are
        self.metrics: dict[str, Any] = {}  # filled by transferkit.fit: everything metrics.json holds
        # medical models: {"positive", "threshold", "threshold_rule", "temperature"}, fitted on validation
        self.clinical: dict[str, Any] | None = self.meta.get("clinical")
        self.task = task if task is not None else reader_named(self.modality)

    @property
    def modality(self) -> str:
        return getattr(self.classifier.backbone, "modality", "image")

    @property
    def preprocess(self) -> Any:
        return self.classifier.backbone.preprocess

    def predict_proba(self, inputs: list[Any], batch_size: int = 64, precision: str = "auto",
                      skip_bad: bool = False, tta: bool | None = None) -> np.ndarray:
        """Class probabilities ``(N, C)`` in ``self.classes`` order, for image paths or HxW[xC] uint8 arrays
        (image models), strings (text models) or audio files (audio models; windows averaged per recording).
        Multi-label models give one independent probability per class.

        With ``skip_bad=True`` unreadable images or empty texts are left out (with a warning), so N may be smaller.
        ``tta``: average test-time views (flips and crops of images, shifted windows of audio); None: as the bundle
        says (``fit`` keeps it where it helped on validation).
        """
        data, _ = self.task.encode(self, inputs, skip_bad)
        return self.predict_encoded(data, batch_size, precision, tta)

    @torch.no_grad()
    def predict_encoded(self, data: Any, batch_size: int = 64, precision: str = "auto",
                        tta: bool | None = None) -> np.ndarray:
        """Probabilities for inputs already prepared by a run (``DecodedImages``, ``EncodedTexts``...); with ``tta``
        (None: the bundle's setting) the mean of the probabilities over the data and the task's test-time views."""
        from ..engine.accel import resolve_precision
        from ..engine.inference import forward_inputs

        if len(data) == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        views = [data]
        if self.tta if tta is None else tta:
            more = self.task.tta_views(data) if self.task.has_tta else []
            if not more:
                raise TransferkitError(f"Test-time augmentation applies to image and audio classifiers; this is a "
                                       f"{self.task.title} model: leave --tta out.")
            views += more
        use_bf16 = resolve_precision(precision, cpu=True) == "bf16"
        probs = []
        for view in views:
            logits = forward_inputs(self.classifier, view, self.preprocess, batch_size=batch_size,
                                    description="predicting" if len(views) == 1 else "predicting (test-time views)",
                                    autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16))
            probs.append(class_probabilities(logits, self.multi_label))
        mean = torch.stack(probs).mean(0).numpy()
        return mean if self.multi_label else self.calibrated(mean)

    def calibrated(self, probs: np.ndarray) -> np.ndarray:
        """Medical models: the class weights' shift undone, then the temperature fitted on validation (others:
        unchanged)."""
        if not self.clinical:
            return probs
        from ..evaluation.clinical import apply_temperature, correct_prior

        probs = correct_prior(probs, self.clinical.get("class_weights"))
        return apply_temperature(probs, float(self.clinical.get("temperature", 1.0)))

    def label_thresholds(self) -> np.ndarray:
        """Each label's cut (multi-label): ``threshold`` as one number per label."""
        return np.broadcast_to(np.asarray(self.threshold, dtype=np.float64), (len(self.classes),)).copy()

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """Predicted class indices: the most probable class, or for a binary medical model the positive class
        whenever its probability reaches the operating threshold."""
        probs = np.asarray(probs)
        if self.clinical and self.clinical.get("positive") is not None:
            k = self.classes.index(self.clinical["positive"])
            return np.where(probs[:, k] >= self.clinical["threshold"], k, 1 - k)
        return probs.argmax(1)

    def predict(self, inputs: list[Any], top_k: int = 5, batch_size: int = 64, precision: str = "auto",
                skip_bad: bool = False, tta: bool | None = None,
                explain: str | Path | None = None) -> list[dict[str, Any]]:
        """Top-k labels per input: ``[{"input": ..., "label": ..., "probability": ..., "top": [{"label",
        "probability"}, ...]}]`` (``probability``: the label's own).

        Multi-label models add ``"labels"``: every label whose probability reaches its threshold (``"label"`` is then
        only the most probable class, whether or not it passes); audio models add
        ``"windows"``: how many windows of the recording were averaged. Binary medical models decide ``"label"``
        at their operating threshold on the positive class (``"positive_probability"``, calibrated). With
        ``skip_bad=True`` unreadable images or empty texts are skipped with a warning and left out of the result.

        ``explain="folder"`` writes one explanation per input there and adds its path as ``"explanation"``: a PNG of
        the image (or the recording's most telling spectrogram window) with the map of the predicted label over it
        (multi-label: the most probable label), or for a text an HTML snippet with its words shaded by their
        attribution. See :mod:`transferkit.evaluation.explain`.

        Raises:
            TransferkitError: with ``explain``, a model whose task or backbone has no explanation (detectors: draw
                their boxes instead), or a folder that cannot be written.
        """
        explain = None if explain is False else explain  # explain=False, as fit takes it: none
        explainer = self.task.explainer(self) if explain is not None else None  # refused before any work
        if explain is not None:
            from ..evaluation.explain_plots import explanation_folder

            explain = explanation_folder(explain)
        data, kept = self.task.encode(self, inputs, skip_bad)
        probs = self.predict_encoded(data, batch_size, precision, tta)
        k = min(top_k, len(self.classes))
        decisions = self.decide(probs) if not self.multi_label else None
        cut = self.label_thresholds()
        positive = (self.clinical or {}).get("positive")
        out = []
        for r, (item, p) in enumerate(zip(kept, probs, strict=True)):
            order = np.argsort(-p)[:k]
            top = [{"label": self.classes[i], "probability": float(p[i])} for i in order]
            label = self.classes[decisions[r]] if decisions is not None else top[0]["label"]
            row = {"input": str(item) if not isinstance(item, np.ndarray) else "<array>", "label": label, "top": top}
            if decisions is not None:
                row["probability"] = float(p[decisions[r]])
            if positive is not None:
                row["positive_probability"] = float(p[self.classes.index(positive)])
            if self.multi_label:
                row["labels"] = [self.classes[i] for i in np.argsort(-p) if p[i] >= cut[i]]
            out.append(row)
        self.task.describe_rows(out, data)
        if explainer is not None:
            targets = decisions if decisions is not None else probs.argmax(1)
            paths = write_explanations(explainer, data, targets, probs, kept, Path(explain))
            for row, path in zip(out, paths, strict=True):
                row["explanation"] = str(path)
        return out

    def evaluate(self, source: Any, skip_bad: bool = False, tta: bool | None = None, **options: Any) -> dict[str, Any]:
        """Metrics on labelled data: a folder (its ``test/`` if present), a CSV/TSV/JSONL (its test rows if it has a
        split column), or for text models also a DataFrame or HF dataset. Every example is scored; no split is made.
        ``options`` are the task's reading options (text: ``text_column``, ``label_column``, ``label_sep`` (default:
        the one used in training), ``encoding``)."""
        from ..evaluation.metrics import classification_metrics, multilabel_metrics

        data = self.task.read_labelled(self, source, skip_bad, **options)
        probs = self.predict_encoded(data, tta=tta)
        if self.multi_label:
            return multilabel_metrics(data.targets.numpy(), probs, self.classes, self.threshold)
        metrics = classification_metrics(data.targets.numpy(), probs, self.classes, self.decide(probs))
        if self.clinical:
            from ..evaluation.clinical import clinical_metrics

            metrics["clinical"] = clinical_metrics(data.targets.numpy(), probs, self.classes,
                                                   self.clinical.get("positive"), self.clinical["threshold"])
        return metrics

    def export(self, out: str | Path, format: str = "onnx", check: Any = None, skip_bad: bool = False,
               quantize: str | None = None, max_drop: float = 0.01, calibration: Any = None,
               tolerance: float = 1e-4) -> dict[str, Any]:
        """Write a self-contained ONNX folder (``model.onnx``, ``labels.json``, ``preprocessing.json``, a reference
        ``predict.py`` that needs no transferkit) once onnxruntime gives this model's probabilities within
        ``tolerance`` on ``check`` (inputs as ``predict`` takes them, or a labelled folder; default: the test files
        the bundle recorded). ``quantize="int8"``: ``model.onnx`` is INT8 (static, calibrated on ``calibration`` or the
        training files the bundle recorded, for CNNs; dynamic for text encoders), refused when it scores more than
        ``max_drop`` below fp32 on labelled check data. Returns ``export.json``'s content. See
        :mod:`transferkit.export.onnx`."""
        from ..export.onnx import export_model

        return export_model(self, out, format=format, check=check, skip_bad=skip_bad, quantize=quantize,
                            max_drop=max_drop, calibration=calibration, tolerance=tolerance)

    def check_labels(self, labels: Any, source: Any) -> None:
        """Refuse labelled data with classes this model does not know."""
        unknown = sorted(set(labels) - set(self.classes))
        if unknown:
            raise TransferkitError(f"Labels {', '.join(unknown[:5])} in {source} are not classes of this model "
                                   f"({', '.join(self.classes)}).")

    def save(self, folder: str | Path) -> Path:
        """Write the bundle atomically: a crash leaves either the old bundle or the new one, never half."""
        from safetensors.torch import save_file

        from .. import __version__
        from .card import render_hub_readme, render_model_card

        bb = self.classifier.backbone
        own = ("format", "transferkit_version", "task", "labels", "multi_label", "threshold", "tta", "backbone",
               "preprocess", "head", "clinical")
        config = {
            "format": BUNDLE_FORMAT,
            "transferkit_version": __version__,
            "task": self.task.bundle_task,
            "labels": self.classes,
            "multi_label": self.multi_label,
            "threshold": self.threshold,
            "tta": self.tta,
            "backbone": bb.spec.to_dict(),
            "preprocess": bb.preprocess.to_dict(),
            "head": self.classifier.head.config,
            **({"clinical": self.clinical} if self.clinical else {}),
            **{k: v for k, v in self.meta.items() if k not in own},
        }
        state = {k: v.detach().cpu().contiguous() for k, v in self.classifier.state_dict().items()}
        with atomic_dir(folder) as tmp:
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": BUNDLE_FORMAT})
            (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))
            plain = json.loads(json.dumps(config, default=str))
            (tmp / "model_card.md").write_text(render_model_card(plain), encoding="utf-8")
            (tmp / "README.md").write_text(render_hub_readme(plain), encoding="utf-8")  # a hub model repository
            self.task.save_files(bb, tmp)
            for name, data in self.files.items():
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp / name).write_bytes(data)
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path, config: dict[str, Any] | None = None, task: Any = None) -> TransferModel:
        """Rebuild from a bundle folder, checking it first (:func:`~transferkit.bundle.format.read_config`,
        :func:`~transferkit.bundle.weights.load_weights`).

        Raises:
            TransferkitError: one line naming the file (and field or tensor) when ``folder`` is not a usable bundle.
        """
        folder = Path(folder)
        config = config if config is not None else read_config(folder)
        if config.get("task") == "object-detection":
            raise TransferkitError(f"{folder} holds a detector: load it with transferkit.load().")
        task = task if task is not None else reader_for(config)
        backbone = rebuild(folder, lambda: task.load_backbone(folder, BackboneSpec.from_dict(config["backbone"]),
                                                             config))
        if backbone.num_features != config["head"]["in_features"]:
            raise TransferkitError(f"{folder / 'config.json'}: head.in_features is {config['head']['in_features']}, "
                                   f"but the backbone gives {backbone.num_features} features; {FIX}.")
        classifier = Classifier(backbone, build_head(config["head"]))
        load_weights(classifier, folder / "model.safetensors")
        meta = {k: v for k, v in config.items() if k not in ("labels",)}
        files = {}
        for f in sorted((folder / "adapter").rglob("*")):
            if f.is_symlink():  # its target would be copied into every bundle saved from this one
                raise TransferkitError(f"{f} is a link inside a bundle, which holds plain files only: replace it by "
                                       "the file it points to.")
            if f.is_file():
                files[str(f.relative_to(folder))] = f.read_bytes()
        model = cls(classifier, config["labels"], meta, multi_label=config.get("multi_label", False), files=files,
                    task=task)
        cut = config.get("threshold", 0.5)  # checked by the schema: a number, or one per label
        model.threshold = [float(x) for x in cut] if isinstance(cut, list) else float(cut)
        model.tta = bool(config.get("tta", False))
        if model.tta and not model.task.has_tta:
            raise TransferkitError(f"{folder / 'config.json'}: tta is true, but {model.task.title} models have no "
                                   "test-time views; re-export the bundle or fix the file.")
        return model

def write_explanations(explainer: Any, data: Any, targets: np.ndarray, probs: np.ndarray, kept: list[Any],
                       folder: Path, batch_size: int = 16) -> list[Path]:
    """One explanation file per encoded input (``NNN-name.png``, texts ``NNN-text.html``) in ``folder`` (created),
    each of ``targets`` (class indices) with its probability; the files written, in input order."""
    from ..evaluation.explain_plots import explanation_name, write_explanation

    positions = list(getattr(data, "kept", None) or range(len(targets)))  # numbered by input, skipped ones too
    paths: list[Path] = []
    for start in range(0, len(targets), batch_size):
        idx = list(range(start, min(start + batch_size, len(targets))))
        found = explainer.explain(data, idx, [int(targets[i]) for i in idx],
                                  [float(probs[i, targets[i]]) for i in idx])
        for i, e in zip(idx, found, strict=True):
            name = explanation_name(positions[i], kept[i], text=explainer.kind == "tokens")
            paths.append(write_explanation(e, folder / name))
    return paths


def load(folder: str | Path) -> Any:
    """Load a bundle saved by ``save()`` (``runs/NAME/model``): a :class:`TransferModel` (classifier) or a
    :class:`~transferkit.bundle.detection.DetectionModel` (detector), as its ``config.json`` says. ``org/name``
    that is not a folder here is a Hugging Face Hub repository (:mod:`.hub`), downloaded (bundle files only) or
    read from the hub cache."""
    from .hub import local_folder

    folder = local_folder(folder)
    config = read_config(folder)
    task = reader_for(config)
    if hasattr(task, "load_model"):
        return task.load_model(Path(folder), config)
    return TransferModel.load(folder, config, task)
