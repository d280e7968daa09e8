"""A trained model you can predict with, save, and load again: :class:`TransferModel`.

Bundle layout (``model/``)::

    model.safetensors   backbone + head tensors
    config.json         format, package version, task, backbone spec, head config, labels, preprocessing, metrics
    model_card.md       what the model does, its data, backbone and weights' origin, training, scores with 95%
                        intervals, known limitations (written from config.json)
    tokenizer/          (text) the backbone's tokenizer files
    encoder/config.json (text) the encoder's architecture
    adapter/            (lora) the adapter in peft's format, with the head beside it
    encoder/            (Hugging Face audio encoder) its config.json and preprocessor_config.json

Loading rebuilds the architecture from these files (no download, no pickle) and fills it from
``model.safetensors``; predictions after reload equal those before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..backbones.protocol import BackboneSpec, PreprocessConfig
from ..errors import TransferkitError
from ..heads import Classifier, build_head
from ..io import atomic_dir

if TYPE_CHECKING:
    from .detection import DetectionModel

BUNDLE_FORMAT = "transferkit-bundle/1"


class TransferModel:
    """An image, text or audio classifier adapted by transferkit.

    Example::

        >>> model = transferkit.fit("data/parts", strategy="linear")
        >>> model.predict(["a.jpg"], top_k=3)[0]["top"][0]
        {'label': 'scratch', 'probability': 0.93}
        >>> model.save("parts-model"); again = transferkit.load("parts-model")
        >>> news = transferkit.load("runs/news/model")          # a text model takes strings
        >>> news.predict(["Shares rose after the merger."])[0]["label"]
        'business'
        >>> transferkit.load("runs/commands/model").predict(["recording.wav"])[0]["windows"]   # audio: per file
        3

    Multi-label models return, per input, every label whose probability reaches ``threshold`` (0.5).
    """

    def __init__(self, classifier: Classifier, classes: list[str], meta: dict[str, Any] | None = None,
                 multi_label: bool = False, files: dict[str, bytes] | None = None):
        self.classifier = classifier.eval()
        self.classes = list(classes)
        self.meta = meta or {}
        self.multi_label = bool(multi_label)
        self.threshold = 0.5
        self.files = dict(files or {})  # extra bundle files (e.g. adapter/), written as they are
        self.metrics: dict[str, Any] = {}  # filled by transferkit.fit: everything metrics.json holds
        # medical models: {"positive", "threshold", "threshold_rule", "temperature"}, fitted on validation
        self.clinical: dict[str, Any] | None = self.meta.get("clinical")

    @property
    def modality(self) -> str:
        return getattr(self.classifier.backbone, "modality", "image")

    @property
    def preprocess(self) -> Any:
        return self.classifier.backbone.preprocess

    def _encode(self, inputs: list[Any], skip_bad: bool):
        """Inputs -> model-ready data (decoded images or token ids), and the inputs that were kept."""
        if self.modality == "text":
            from ..console import warn
            from ..data.text import encode_texts

            if isinstance(inputs, str):
                raise TransferkitError("Pass a list of texts, not a single string: model.predict([text]).")
            ok = [isinstance(t, str) and bool(t.strip()) for t in inputs]
            bad = [i for i, good in enumerate(ok) if not good]
            kept = [t for t, good in zip(inputs, ok, strict=True) if good]
            if bad and not skip_bad:
                raise TransferkitError(f"Input #{bad[0]} is empty or not a string: give non-empty texts (or skip_bad=True).")
            if bad:
                warn(f"skipped {len(bad)} empty input(s)")
            bb = self.classifier.backbone
            return encode_texts(kept, bb.tokenizer, bb.preprocess.max_length, description="tokenising"), kept
        if self.modality == "audio":
            if isinstance(inputs, (str, Path)) or (isinstance(inputs, np.ndarray) and inputs.ndim == 1):
                raise TransferkitError("Pass a list of audio files or waveforms, not a single one: model.predict([x]).")
            return self._read_audio(list(inputs), skip_bad)
        return self._decode(inputs, skip_bad)

    def _read_audio(self, items: list[Any], skip_bad: bool, labels: list[str] | None = None,
                    array_rate: int | None = None):
        """Audio files (or 1-D arrays at ``array_rate``, default the model's sample rate) -> windows, read as in
        training."""
        from ..data.audio import read_clips, window_clips

        pre = self.preprocess
        clips = read_clips(items, pre, skip_bad=skip_bad, array_rate=array_rate or pre.sample_rate,
                           description="reading audio")
        kept = [items[i] for i in clips.kept]
        targets = [self.classes.index(labels[i]) for i in clips.kept] if labels is not None else None
        return window_clips(clips, targets, pre.clip_samples), kept

    def _decode(self, images: list[Any], skip_bad: bool):
        from ..data.images import decode
        from ..data.sources import ImageSet

        images = list(images)
        data = decode(ImageSet(images, [self.classes[0]] * len(images)), self.preprocess, self.classes,
                      skip_bad=skip_bad, description="decoding")
        return data, [images[i] for i in data.kept]

    def predict_proba(self, inputs: list[Any], batch_size: int = 64, precision: str = "auto", skip_bad: bool = False) -> np.ndarray:
        """Class probabilities ``(N, C)`` in ``self.classes`` order, for image paths or HxW[xC] uint8 arrays
        (image models), strings (text models) or audio files (audio models; windows averaged per recording).
        Multi-label models give one independent probability per class.

        With ``skip_bad=True`` unreadable images or empty texts are left out (with a warning), so N may be smaller.
        """
        data, _ = self._encode(inputs, skip_bad)
        return self.predict_encoded(data, batch_size, precision)

    @torch.no_grad()
    def predict_encoded(self, data: Any, batch_size: int = 64, precision: str = "auto") -> np.ndarray:
        """Probabilities for inputs already prepared by a run (``DecodedImages`` or ``EncodedTexts``)."""
        from ..engine.accel import resolve_precision
        from ..engine.inference import forward_inputs

        if len(data) == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        use_bf16 = resolve_precision(precision, cpu=True) == "bf16"
        logits = forward_inputs(self.classifier, data, self.preprocess, batch_size=batch_size, description="predicting",
                                autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16))
        if self.multi_label:
            return torch.sigmoid(logits).numpy()
        return self.calibrated(torch.softmax(logits, dim=1).numpy())

    def calibrated(self, probs: np.ndarray) -> np.ndarray:
        """Medical models: the class weights' shift undone, then the temperature fitted on validation (others:
        unchanged)."""
        if not self.clinical:
            return probs
        from ..evaluation.clinical import apply_temperature, correct_prior

        probs = correct_prior(probs, self.clinical.get("class_weights"))
        return apply_temperature(probs, float(self.clinical.get("temperature", 1.0)))

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """Predicted class indices: the most probable class, or for a binary medical model the positive class
        whenever its probability reaches the operating threshold."""
        probs = np.asarray(probs)
        if self.clinical and self.clinical.get("positive") is not None:
            k = self.classes.index(self.clinical["positive"])
            return np.where(probs[:, k] >= self.clinical["threshold"], k, 1 - k)
        return probs.argmax(1)

    def predict_pixels(self, pixels: torch.Tensor, batch_size: int = 64, precision: str = "auto") -> np.ndarray:
        """Probabilities for uint8 images already at the backbone's input size ``(N, 3, H, W)``."""
        from ..data.images import DecodedImages

        data = DecodedImages(pixels, torch.zeros(len(pixels), dtype=torch.long), [], [])
        return self.predict_encoded(data, batch_size, precision)

    def predict(self, inputs: list[Any], top_k: int = 5, batch_size: int = 64, precision: str = "auto",
                skip_bad: bool = False) -> list[dict[str, Any]]:
        """Top-k labels per input: ``[{"input": ..., "label": ..., "probability": ..., "top": [{"label",
        "probability"}, ...]}]`` (``probability``: the label's own).

        Multi-label models add ``"labels"``: every label with probability >= ``threshold``; audio models add
        ``"windows"``: how many windows of the recording were averaged. Binary medical models decide ``"label"``
        at their operating threshold on the positive class (``"positive_probability"``, calibrated). With
        ``skip_bad=True`` unreadable images or empty texts are skipped with a warning and left out of the result.
        """
        data, kept = self._encode(inputs, skip_bad)
        probs = self.predict_encoded(data, batch_size, precision)
        k = min(top_k, len(self.classes))
        decisions = self.decide(probs) if not self.multi_label else None
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
                row["labels"] = [self.classes[i] for i in np.argsort(-p) if p[i] >= self.threshold]
            out.append(row)
        if self.modality == "audio":
            for r, n in enumerate(torch.bincount(data.owner, minlength=len(out)).tolist()):
                out[r]["windows"] = n
        return out

    def evaluate(self, source: Any, skip_bad: bool = False, **text_options: Any) -> dict[str, Any]:
        """Metrics on labelled data: a folder (its ``test/`` if present), a CSV/TSV/JSONL (its test rows if it has a
        split column), or for text models also a DataFrame or HF dataset. Every example is scored; no split is made.
        ``text_options``: ``text_column``, ``label_column``, ``label_sep`` (default: the one used in training), ``encoding``."""
        from ..evaluation.metrics import classification_metrics, multilabel_metrics

        if self.modality == "text":
            from ..data.text import TextOptions, encode_set, load_text_eval_set

            # read labels the way training did: the model says single- or multi-label, and how cells were split
            text_options.setdefault("label_sep", self.meta.get("label_sep"))
            if text_options["label_sep"] is None:
                text_options.pop("label_sep")
            texts = load_text_eval_set(source, TextOptions(skip_bad=skip_bad, multi_label=self.multi_label, **text_options))
            self._check_labels(texts.label_names(), source)
            data = encode_set(texts, self.classifier.backbone, self.classes)
        elif self.modality == "audio":
            from ..data.sources import load_test_set

            files = load_test_set(source, skip_bad=skip_bad, kind="audio")
            self._check_labels(set(files.labels), source)
            data, _ = self._read_audio(list(files.items), skip_bad, list(files.labels), getattr(files, "sample_rate", None))
        else:
            from ..data.images import decode
            from ..data.sources import load_test_set

            images = load_test_set(source, skip_bad=skip_bad)
            self._check_labels(set(images.labels), source)
            data = decode(images, self.preprocess, self.classes, skip_bad=skip_bad)
        probs = self.predict_encoded(data)
        if self.multi_label:
            return multilabel_metrics(data.targets.numpy(), probs, self.classes, self.threshold)
        metrics = classification_metrics(data.targets.numpy(), probs, self.classes, self.decide(probs))
        if self.clinical:
            from ..evaluation.clinical import clinical_metrics

            metrics["clinical"] = clinical_metrics(data.targets.numpy(), probs, self.classes,
                                                   self.clinical.get("positive"), self.clinical["threshold"])
        return metrics

    def _check_labels(self, labels: Any, source: Any) -> None:
        unknown = sorted(set(labels) - set(self.classes))
        if unknown:
            raise TransferkitError(f"Labels {', '.join(unknown[:5])} in {source} are not classes of this model ({', '.join(self.classes)}).")

    def save(self, folder: str | Path) -> Path:
        """Write the bundle atomically: a crash leaves either the old bundle or the new one, never half."""
        from safetensors.torch import save_file

        from .. import __version__
        from .card import render_model_card

        bb = self.classifier.backbone
        own = ("format", "transferkit_version", "task", "labels", "multi_label", "threshold", "backbone", "preprocess", "head",
               "clinical")
        config = {
            "format": BUNDLE_FORMAT,
            "transferkit_version": __version__,
            "task": f"{self.modality}-classification",
            "labels": self.classes,
            "multi_label": self.multi_label,
            "threshold": self.threshold,
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
            (tmp / "model_card.md").write_text(render_model_card(json.loads(json.dumps(config, default=str))))
            if self.modality == "text":
                from ..backbones.text import save_text_files

                save_text_files(bb, tmp)
            elif self.modality == "audio":
                from ..backbones.audio import save_audio_files

                save_audio_files(bb, tmp)
            for name, data in self.files.items():
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp / name).write_bytes(data)
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path) -> TransferModel:
        """Rebuild from a bundle folder; raises one clear error when it is not one."""
        from safetensors.torch import load_file

        from ..backbones.registry import build

        folder = Path(folder)
        cfg_path, w_path = folder / "config.json", folder / "model.safetensors"
        if not cfg_path.is_file() or not w_path.is_file():
            raise TransferkitError(f"{folder} is not a transferkit bundle (needs config.json and model.safetensors): pass the run's model/ folder.")
        try:
            config = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as err:
            raise TransferkitError(f"{cfg_path} is damaged ({err.msg} at line {err.lineno}): re-save the model.") from None
        if config.get("format") != BUNDLE_FORMAT:
            raise TransferkitError(f"{cfg_path} has format {config.get('format')!r}, expected {BUNDLE_FORMAT!r}.")
        if config.get("task") == "object-detection":
            raise TransferkitError(f"{folder} holds a detector: load it with transferkit.load().")
        spec = BackboneSpec.from_dict(config["backbone"])
        if config.get("task") == "text-classification":
            from ..backbones.text import TextPreprocessConfig, load_text_files

            if not (folder / "tokenizer").is_dir() or not (folder / "encoder" / "config.json").is_file():
                raise TransferkitError(f"{folder} is a text bundle without tokenizer/ or encoder/config.json: copy the whole model/ folder.")
            backbone = load_text_files(folder, spec, TextPreprocessConfig.from_dict(config["preprocess"]))
        elif config.get("task") == "audio-classification":
            from ..backbones.audio import AudioPreprocessConfig, load_audio_backbone

            backbone = load_audio_backbone(folder, spec, AudioPreprocessConfig.from_dict(config["preprocess"]))
        else:
            backbone = build(spec, pretrained=False)
            backbone.preprocess = PreprocessConfig.from_dict(config["preprocess"])
        classifier = Classifier(backbone, build_head(config["head"]))
        classifier.load_state_dict(load_file(str(w_path)))
        meta = {k: v for k, v in config.items() if k not in ("labels",)}
        files = {str(f.relative_to(folder)): f.read_bytes() for f in (folder / "adapter").rglob("*") if f.is_file()}
        model = cls(classifier, config["labels"], meta, multi_label=config.get("multi_label", False), files=files)
        model.threshold = float(config.get("threshold", 0.5))
        return model


def load(folder: str | Path) -> TransferModel | DetectionModel:
    """Load a bundle saved by ``save()`` (``runs/NAME/model``): a :class:`TransferModel` (classifier) or a
    :class:`~transferkit.bundle.detection.DetectionModel` (detector), as its ``config.json`` says."""
    cfg_path = Path(folder) / "config.json"
    if cfg_path.is_file():
        try:
            config = json.loads(cfg_path.read_text())
        except json.JSONDecodeError:
            config = {}  # TransferModel.load explains the damage
        if config.get("task") == "object-detection" and config.get("format") == BUNDLE_FORMAT:
            from .detection import DetectionModel

            if not (Path(folder) / "model.safetensors").is_file():
                raise TransferkitError(f"{folder} is a detector bundle without model.safetensors: copy the whole model/ folder.")
            return DetectionModel.from_config(Path(folder), config)
    return TransferModel.load(folder)
