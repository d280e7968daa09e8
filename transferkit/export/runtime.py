"""An exported ONNX folder run with onnxruntime, as ``transferkit serve`` answers with it: :class:`ExportedModel`.

The folder's own ``predict.py`` is never run (a model folder's code is never run): its functions are transferkit's
(``export/scripts/``), imported from the package, so the served answers are the reference script's. Images are sized
from their header against the pixel limit before they are decoded, as for a bundle; DICOM, NIfTI and 16-bit files
are read as Pillow reads them, which is not how transferkit windows them (docs/export.md says so for the script too).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TransferkitError

# an export's task -> (what predict takes: "files" or "strings", the modality the server reads uploads for)
SERVED_TASKS = {"image-classification": ("files", "image"), "text-classification": ("strings", "text"),
                "audio-classification": ("files", "audio"), "object-detection": ("files", "detection")}



@dataclass(frozen=True)
class ExportedTask:
    """What a server asks of a model's task: the kind of bundle it came from and what ``predict`` takes."""

    bundle_task: str
    inputs: str  # "files" or "strings"


class ExportedModel:
    """``model.onnx`` with its ``labels.json`` and ``preprocessing.json``, predicting as ``TransferModel.predict``
    does (rows with ``input``, ``label``, ``probability``, ``top``; ``positive_probability`` for a medical model,
    ``labels`` for a multi-label one, ``windows`` for audio), or as ``DetectionModel.predict`` does (``input``,
    ``boxes``).

    Raises:
        TransferkitError: the folder is not a complete export, or its graph reads data from outside the folder.
    """

    def __init__(self, folder: str | Path):
        import onnxruntime as ort

        self.folder = folder = Path(folder)
        meta, labels, pre = (_json(folder / name) for name in ("export.json", "labels.json", "preprocessing.json"))
        kind = meta.get("task") if isinstance(meta, dict) else None
        if kind not in SERVED_TASKS:
            raise TransferkitError(f"{folder / 'export.json'}: task {str(kind)[:40]!r} is not one transferkit exports: "
                                   "export the bundle again, or serve the bundle itself.")
        if not (isinstance(labels, list) and labels and all(isinstance(c, str) for c in labels)):
            raise TransferkitError(f"{folder / 'labels.json'} must be a list of class names: export the bundle again.")
        if not isinstance(pre, dict):
            raise TransferkitError(f"{folder / 'preprocessing.json'} must be a JSON object: export the bundle again.")
        graph = folder / "model.onnx"
        if not graph.is_file() or graph.is_symlink():
            raise TransferkitError(f"{graph} is missing (or a link): export the bundle again.")
        if len(set(labels)) != len(labels):
            raise TransferkitError(f"{folder / 'labels.json'} names a class twice: export the bundle again.")
        problem = _check_preprocessing(kind, pre, labels)
        if problem is None and pre.get("positive") is not None and (pre["positive"] not in labels
                                                                    or len(labels) != 2 or "threshold" not in pre):
            problem = f"positive {str(pre['positive'])[:40]!r} is not one of two labels with a threshold"
        if problem:
            raise TransferkitError(f"{folder / 'preprocessing.json'}: {problem}; export the bundle again.")
        _refuse_external_data(graph)
        try:
            self.session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime's own errors (InvalidGraph, InvalidArgument ...)
            raise TransferkitError(f"{graph} is not a model onnxruntime can run ({type(err).__name__}): export the "
                                   "bundle again.") from None
        if kind == "audio-classification":  # the graph's window length is fixed: the JSON must cut windows of it
            waves = {i.name: i.shape for i in self.session.get_inputs()}.get("waves") or [None, None]
            samples = int(round(pre["clip_seconds"] * pre["sample_rate"]))
            if waves[-1] != samples:
                raise TransferkitError(f"{folder / 'preprocessing.json'}: clip_seconds x sample_rate is {samples} "
                                       f"samples, but {graph} takes windows of {waves[-1]}; export the bundle again.")
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        name, width = ("scores", len(labels) + 1) if kind == "object-detection" else ("probabilities", len(labels))
        found = (outputs.get(name) or [None])[-1]
        if kind == "object-detection" and name in outputs and not isinstance(found, int):
            found = self._score_width(pre)  # the TorchScript exporter leaves the class count unnamed: run it once
        if name not in outputs or (isinstance(found, int) and found != width):
            shown = found - 1 if kind == "object-detection" and isinstance(found, int) else found  # background
            raise TransferkitError(f"{graph} gives {shown} class {name} per input, but {folder / 'labels.json'} "
                                   f"names {len(labels)} classes: export the bundle again.")
        self.classes, self.pre, self.export = labels, pre, meta
        inputs, self.modality = SERVED_TASKS[kind]
        self.task = ExportedTask(kind, inputs)
        self.multi_label = bool(pre.get("multi_label"))
        self.meta = {"backbone": {"name": (meta.get("bundle") or {}).get("backbone")}, "export": meta}

    def _score_width(self, pre: dict[str, Any]) -> int | None:
        """How many class scores (background included) the detector's graph gives, from one blank canvas."""
        step = int(pre["size_divisible"])
        try:
            scores = self.session.run(["scores"], {"pixels": np.zeros((1, 3, step, step), np.uint8),
                                                   "sizes": np.array([[step, step]], np.int64)})[0]
        except Exception:  # noqa: BLE001 - not a detector's graph: the width check below names it
            return None
        return int(scores.shape[-1])

    def predict(self, inputs: list[Any], top_k: int = 5) -> list[dict[str, Any]]:
        """One row per input (image or audio paths, or texts for a text model), in order."""
        if self.modality == "detection":
            return [self._boxes(path) for path in inputs]
        if self.modality == "audio":
            return [self._recording(path, top_k) for path in inputs]
        if self.task.inputs == "strings":
            from .scripts.text import encode

            for i, text in enumerate(inputs):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:  # a lone surrogate (JSON allows "\ud800"): the tokenizer would fail
                    raise TransferkitError(f"Input #{i} is not valid text (a lone surrogate): fix its encoding.") \
                        from None
            feeds = encode(list(inputs), self.folder, self.pre)
        else:
            feeds = {"pixels": np.stack([self._pixels(p) for p in inputs])}
        probs = self.session.run(["probabilities"], feeds)[0]
        return [self._row(item, p, top_k) for item, p in zip(inputs, probs, strict=True)]

    def _pixels(self, path: Any) -> np.ndarray:
        from .scripts.image import pixels

        return _from_image(path, lambda: pixels(path, self.pre))

    def _boxes(self, path: Any) -> dict[str, Any]:
        from .scripts.detection import detect

        name = str(path)
        b, s, k = _from_image(path, lambda: detect(self.session, path, self.pre))
        shown = s >= self.pre["threshold"]
        return {"input": name, "boxes": [
            {"label": self.classes[int(c)], "score": round(float(v), 4), "box": [round(float(x), 1) for x in box]}
            for box, v, c in zip(b[shown], s[shown], k[shown], strict=True)]}

    def _recording(self, path: Any, top_k: int) -> dict[str, Any]:
        from .scripts.audio import probabilities, read

        name = str(path)
        try:
            p, windows = probabilities(self.session, read(path, self.pre), self.pre)
        except (OSError, RuntimeError, ValueError) as err:  # soundfile's errors are RuntimeErrors
            raise TransferkitError(f"{name} is not a readable recording ({_reason(err)}): send WAV, FLAC, OGG or "
                                   "MP3.") from None
        return {**self._row(path, p, top_k), "windows": windows}

    def _row(self, item: Any, p: np.ndarray, top_k: int) -> dict[str, Any]:
        from .scripts.image import decide, present

        order = np.argsort(-p)[:min(top_k, len(self.classes))]
        top = [{"label": self.classes[i], "probability": float(p[i])} for i in order]
        row: dict[str, Any] = {"input": str(item), "label": top[0]["label"], "top": top}
        if self.multi_label:
            row["labels"] = present(p, self.classes, {"threshold": 0.5, **self.pre})
            return row
        k = decide(p, self.classes, self.pre)
        row |= {"label": self.classes[k], "probability": float(p[k])}
        if self.pre.get("positive") is not None:
            row["positive_probability"] = float(p[self.classes.index(self.pre["positive"])])
        return row


def _from_image(path: Any, read: Any) -> Any:
    """``read()`` of an image file, once its header says its size is within the pixel limit (a decompression bomb is
    never decoded); one line naming the file (the server puts the client's own name in its place) when it is not a
    readable image."""
    from PIL import Image

    from ..data.images import open_image

    name = str(path)
    try:
        open_image(Path(path), name).close()
        return read()
    except TransferkitError:  # the size check's own line (over the pixel limit)
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise TransferkitError(f"{name} is not a readable image ({_reason(err)}): send a JPEG, PNG, TIFF, BMP or WebP "
                               "file.") from None


def _reason(err: BaseException) -> str:
    """Why a file could not be read, without the file's path (an upload's name on disk is the server's own)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return (text.rsplit(": ", 1)[-1] if ": " in text else text)[:160] or type(err).__name__


def _check_preprocessing(kind: str, pre: dict[str, Any], labels: list[str]) -> str | None:
    """What is wrong with what the reference scripts read from ``preprocessing.json`` (None when nothing is): the
    keys they need, each of the type and in the range an export writes (a tampered size must not make the server
    allocate gigabytes per upload)."""
    from ..errors import MAX_INPUT_SIZE, MAX_TEXT_TOKENS, MIN_INPUT_SIZE, is_finite_number, is_whole_number
    from .scripts.image import FILTERS

    def whole(v: Any, lo: int, hi: int) -> bool:
        return is_whole_number(v) and lo <= v <= hi

    rules: dict[str, tuple[str, Any]] = {
        "multi_label": ("true or false", lambda v: isinstance(v, bool)),
        "threshold": ("a number from 0 to 1, or a list of one per label",
                      lambda v: is_finite_number(v) and 0 <= v <= 1
                      or (pre.get("multi_label") is True and isinstance(v, list) and len(v) == len(labels)
                          and all(is_finite_number(x) and 0 <= x <= 1 for x in v))),
    }
    if kind in ("image-classification", "object-detection"):
        rules |= {"interpolation": (f"one of {', '.join(FILTERS)}", lambda v: v in FILTERS)}
    if kind == "object-detection":
        rules |= {
            "image_size": (f"a whole number from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE}",
                           lambda v: whole(v, MIN_INPUT_SIZE, MAX_INPUT_SIZE)),
            "size_divisible": ("a whole number from 1 to 256", lambda v: whole(v, 1, 256)),
            "score_thresh": ("a number from 0 to 1", lambda v: is_finite_number(v) and 0 <= v <= 1),
            "nms_thresh": ("a number from 0 to 1", lambda v: is_finite_number(v) and 0 <= v <= 1),
            "detections_per_img": ("a whole number from 1 to 10000", lambda v: whole(v, 1, 10_000)),
            "topk_candidates": ("a whole number from 1 to 100000", lambda v: whole(v, 1, 100_000)),
        }
    elif kind == "audio-classification":
        rules |= {
            "sample_rate": ("a whole number from 1000 to 384000", lambda v: whole(v, 1000, 384_000)),
            "clip_seconds": ("a number above 0 up to 600", lambda v: is_finite_number(v) and 0 < v <= 600),
            "trim_db": ("null or a number above 0 up to 200",
                        lambda v: v is None or (is_finite_number(v) and 0 < v <= 200)),
            "target_dbfs": ("null or a number from -200 to 0",
                            lambda v: v is None or (is_finite_number(v) and -200 <= v <= 0)),
        }
    elif kind == "image-classification":
        rules |= {
            "input_size": (f"two whole numbers from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE}",
                           lambda v: isinstance(v, list) and len(v) == 2
                           and all(whole(x, MIN_INPUT_SIZE, MAX_INPUT_SIZE) for x in v)),
            "resize": ("crop or pad", lambda v: v in ("crop", "pad")),
            "crop_pct": ("a number above 0 up to 1", lambda v: is_finite_number(v) and 0 < v <= 1),
        }
    else:
        rules |= {"max_length": (f"a whole number from 1 to {MAX_TEXT_TOKENS}", lambda v: whole(v, 1, MAX_TEXT_TOKENS)),
                  "pad_id": ("a whole number of 0 or more", lambda v: whole(v, 0, 2**31 - 1)),
                  "pad_token": ("a string", lambda v: isinstance(v, str))}
    optional = {"multi_label", "threshold"} - ({"threshold"} if kind == "object-detection" else set())
    optional |= {"trim_db", "target_dbfs"} if kind == "audio-classification" else set()
    for key, (must, ok) in rules.items():
        if key not in pre:
            if key not in optional:
                return f"{key} is missing"
            continue
        if not ok(pre[key]):
            return f"{key} must be {must}, got {str(pre[key])[:40]!r}"
    return None


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TransferkitError(f"{path} is missing: this is not a complete exported folder (export the bundle "
                               "again).") from None
    except (ValueError, UnicodeDecodeError):
        raise TransferkitError(f"{path} is not valid JSON: export the bundle again.") from None


def _refuse_external_data(graph: Path) -> None:
    """A graph that keeps tensors in other files could name any file on the machine: exports never do, so refuse."""
    import onnx

    try:
        proto = onnx.load(str(graph), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf's DecodeError and friends: not an ONNX file
        raise TransferkitError(f"{graph} is not a readable ONNX model ({type(err).__name__}): export the bundle "
                               "again.") from None
    external = [t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise TransferkitError(f"{graph} keeps tensor {external[0]} in another file: transferkit exports hold every "
                               "weight in model.onnx; export the bundle again.")
