"""ONNX export of a classifier bundle, with parity measured against PyTorch before anything is written; the pieces
a detector's export (:mod:`transferkit.export.detection`) shares: options, ``--out``, the exporter, INT8.

The exported folder (written whole or not at all)::

    model.onnx          the network from its input tensors to probabilities: what is tensor arithmetic lives in the
                        graph (an image's scaling to [0, 1] and mean/std; a medical model's calibration; an audio
                        model's spectrogram and the average of a recording's windows), the batch (and a text's
                        length, an audio model's windows) is dynamic
    labels.json         the class names, in the order of the output's columns
    preprocessing.json  what happens before the graph and cannot live in it (decoding, resizing and cropping an
                        image; tokenising a text; reading, resampling and cutting a recording into windows), and the
                        decision after it (a medical model's positive class and operating threshold)
    tokenizer.json      (text) the fast tokenizer, for the ``tokenizers`` package
    predict.py          a reference script without transferkit (:mod:`transferkit.export.scripts`)
    export.json         the exporter and opset, the versions, the bundle it came from and the parity measured

What differs between kinds of data (the graph's inputs, the steps outside it) is the model's task's: it gives an
:class:`ExportSpec` (``Task.export_spec``); this module exports, checks and writes.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import TransferkitError, need
from . import FORMATS

OPSET = 18
TOLERANCE = 1e-4  # largest difference of a probability between onnxruntime and PyTorch (fp32) that export accepts
QUANTIZE = ("int8",)
MAX_DROP = 0.01  # INT8 may score at most 1 point of accuracy (or 0.01 AUROC) below fp32 on the check data


@dataclass
class ExportSpec:
    """A task's answer to "how does this model become a graph".

    ``prepare``: a module from the graph's inputs to the classifier's input (``None``: the inputs as they are);
    ``inputs``: example inputs by name, in the order ``forward`` takes them; ``dynamic``: per input, its dynamic axes
    (axis -> name; one name shared by several inputs is one dimension); ``preprocessing``: the JSON of the steps
    outside the graph; ``files``: more files for the folder (name -> bytes); ``feeds``: encoded data (as the task's
    ``encode`` gives it) and row positions -> onnxruntime's inputs for those rows; ``script``: the reference
    ``predict.py``; ``quantization``: how ``--quantize int8`` quantizes it; ``classifier``: the network to export,
    when it is not the model's own (audio: the same weights with a spectrogram the exporter can trace); ``pool``:
    (logits, graph inputs) -> logits, a step between the network and the probabilities (audio: the windows'
    logits averaged per recording), whose result is the graph's second output; ``outputs``: the graph's output
    names; ``run``: (session, encoded data) -> every row's probabilities, where rows do not run in batches of
    ``feeds`` (audio: a long recording's windows run in parts, as the reference script runs them; ``feeds`` then
    only calibrates INT8).
    """

    prepare: nn.Module | None
    inputs: dict[str, torch.Tensor]
    dynamic: dict[str, dict[int, str]]
    preprocessing: dict[str, Any]
    feeds: Callable[[Any, np.ndarray], dict[str, np.ndarray]]
    script: str
    files: dict[str, bytes] = field(default_factory=dict)
    quantization: str = "static"  # how INT8 quantizes it: "static" (calibrated: CNNs) or "dynamic" (transformers)
    classifier: nn.Module | None = None
    pool: Callable[..., torch.Tensor] | None = None
    outputs: tuple[str, ...] = ("probabilities",)  # with a pool: ("probabilities", the pooled logits' name)
    run: Callable[[Any, Any], np.ndarray] | None = None


class ProbabilityGraph(nn.Module):
    """Graph inputs -> ``prepare`` -> the classifier (-> ``pool``) -> probabilities, as
    ``TransferModel.predict_proba`` gives them: softmax (sigmoid for multi-label), then for a medical model the class
    weights' shift undone and the temperature applied (:func:`transferkit.evaluation.clinical.correct_prior`,
    ``apply_temperature``)."""

    def __init__(self, classifier: nn.Module, prepare: nn.Module | None, multi_label: bool,
                 class_weights: list[float] | None = None, temperature: float = 1.0,
                 pool: Callable[..., torch.Tensor] | None = None):
        super().__init__()
        self.classifier, self.prepare, self.multi_label, self.pool = classifier, prepare, multi_label, pool
        self.temperature = float(temperature)
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("weights", weights, persistent=False)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = self.prepare(*inputs) if self.prepare is not None else inputs[0]
        logits = self.classifier(x).float()
        if self.pool is not None:  # the pooled logits are a second output: parts of an input can be combined
            logits = self.pool(logits, *inputs)
            return self.probabilities(logits), logits
        return self.probabilities(logits)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        if self.multi_label:
            return torch.sigmoid(logits)
        probs = torch.softmax(logits, dim=1)
        if self.weights is not None:
            probs = probs / self.weights
            probs = probs / probs.sum(dim=1, keepdim=True)
        if self.temperature != 1.0:
            probs = torch.softmax(torch.log(probs.clamp(min=1e-12)) / self.temperature, dim=1)
        return probs


def export_model(model: Any, out: str | Path, *, format: str = "onnx", check: Any = None, skip_bad: bool = False,
                 quantize: str | None = None, max_drop: float = MAX_DROP, calibration: Any = None,
                 opset: int = OPSET, tolerance: float = TOLERANCE, batch_size: int = 32) -> dict[str, Any]:
    """Export ``model`` (a loaded bundle) to ``out`` and prove it: ``check`` (files, a folder, a labelled source;
    default: the test files the bundle recorded) runs through PyTorch (fp32) and onnxruntime, and the export is
    refused, with nothing written, when a probability differs by more than ``tolerance`` or a decision differs.

    ``quantize="int8"``: onnxruntime post-training quantization (:func:`quantize_int8`; static, calibrated on
    ``calibration`` inputs or the training files the bundle recorded, for CNNs; dynamic for text encoders).
    ``model.onnx`` is then the INT8 model and ``model.fp32.onnx`` the other; the INT8 model's score on the
    labelled check data is set beside fp32's, and the export is refused when it is lower by more than
    ``max_drop`` (accuracy; AUROC for a binary medical model), or when under half the weights' bytes are INT8.

    Returns what ``export.json`` holds (the parity under ``"parity"``, INT8 under ``"int8"``).

    Raises:
        TransferkitError: an unknown format, a task without export, no data to check with, a failed export or
            parity check, an INT8 model that scores too low (one line each, with the figures).
    """
    from .. import __version__
    from ..console import info
    from ..io import atomic_dir
    from ..rundir import locked

    check_options(format, quantize, max_drop, calibration)
    out = check_out(Path(out))
    onnx, ort = onnx_runtime()
    spec = model.task.export_spec(model)
    data, source, targets = _check_data(model, check, skip_bad)
    if quantize and targets is None:
        raise TransferkitError("--quantize int8 compares the INT8 model's score with fp32's, which needs labelled "
                               "inputs: --check a labelled folder or table.")
    clinical = model.clinical or {}
    graph = ProbabilityGraph(spec.classifier or model.classifier, spec.prepare, model.multi_label,
                             clinical.get("class_weights"), float(clinical.get("temperature", 1.0)), spec.pool).eval()
    # held by one export at a time (as fit holds --out); what a killed export left beside it goes first, under the lock
    with locked(out, remove=True), atomic_dir(tidied(out)) as tmp:
        fp32 = tmp / ("model.fp32.onnx" if quantize else "model.onnx")
        exporter = export_graph(graph, spec.inputs, spec.dynamic, fp32, opset, spec.outputs)
        ours = run_session(session_for(fp32), spec, data, batch_size)
        theirs = model.predict_encoded(data, batch_size=batch_size, precision="no", tta=False)  # the graph has none
        parity = compare(model, theirs, ours, tolerance, source)
        meta = {"format": "onnx", "exporter": exporter, "opset": opset, "task": model.task.bundle_task,
                "model": "model.onnx",
                "inputs": {name: {"dtype": str(t.dtype).removeprefix("torch."),
                                  "dynamic": {str(axis): dim for axis, dim in spec.dynamic.get(name, {}).items()}}
                           for name, t in spec.inputs.items()},
                "output": spec.outputs[0] if len(spec.outputs) == 1 else list(spec.outputs),
                "versions": {"transferkit": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                             "onnxruntime": ort.__version__},
                "bundle": {"run_id": model.meta.get("run_id"), "backbone": model.meta.get("backbone", {}).get("name")},
                "parity": parity}
        if quantize:
            feeds = _calibration_feeds(model, spec, calibration, skip_bad, batch_size)
            quantize_int8(fp32, tmp / "model.onnx", spec.quantization, feeds)
            int8 = run_session(session_for(tmp / "model.onnx"), spec, data, batch_size)
            meta["int8"] = int8_report(model, targets, ours, int8, tmp / "model.onnx", spec.quantization, max_drop,
                                       source)
        (tmp / "labels.json").write_text(json.dumps(model.classes, indent=1))
        (tmp / "preprocessing.json").write_text(json.dumps({**spec.preprocessing, **decision(model)}, indent=2))
        (tmp / "predict.py").write_text(spec.script)
        for name, content in spec.files.items():
            (tmp / name).write_bytes(content)
        (tmp / "export.json").write_text(json.dumps(meta, indent=2))
    info(f"exported to {out}: onnxruntime and PyTorch agree on {parity['inputs']} input(s) from {source}, "
         f"probabilities within {parity['max_abs_diff']:.1e} (limit {tolerance:g})")
    if quantize:
        tell_int8(meta["int8"], meta["int8"]["method"], "labelled input(s)")
    if getattr(model, "tta", False):
        from ..console import warn

        warn("this bundle averages test-time views (fit kept them: they helped on validation); the exported graph "
             "scores each input once, as the bundle does with --no-tta, and its parity was checked that way")
    return meta


def tell_int8(q: dict[str, Any], method: str, inputs: str) -> None:
    """The console line of an INT8 export: its score beside fp32's, its INT8 share and file sizes."""
    from ..console import info

    info(f"INT8 ({method}): {q['metric']} {q['int8']:.4f} against fp32's {q['fp32']:.4f} on {q['inputs']} {inputs}; "
         f"{q['int8_weight_share']:.0%} of the weights' bytes are INT8; {q['file_mb']:.1f} MB against "
         f"{q['fp32_file_mb']:.1f} MB")


def check_options(format: str, quantize: str | None, max_drop: float, calibration: Any) -> None:
    """Refuse, before any work, an unknown format or quantization, a ``max_drop`` outside 0-1, and INT8 options
    without ``--quantize int8``."""
    if format not in FORMATS:
        raise TransferkitError(f"Unknown export format {format!r}: transferkit exports {', '.join(FORMATS)}.")
    if quantize not in (None, *QUANTIZE):
        raise TransferkitError(f"Unknown quantization {quantize!r}: transferkit quantizes to {', '.join(QUANTIZE)}.")
    if not 0 <= max_drop <= 1:
        raise TransferkitError(f"max_drop is {max_drop}: give a score difference between 0 and 1, e.g. 0.01.")
    if not quantize and (max_drop != MAX_DROP or calibration is not None):
        raise TransferkitError("--max-drop and --calibration are for --quantize int8: add it, or leave them out.")


def _calibration_feeds(model: Any, spec: ExportSpec, calibration: Any, skip_bad: bool,
                       batch_size: int) -> list[dict[str, np.ndarray]]:
    """Batches of graph inputs to calibrate static quantization with: ``calibration`` (files or a folder), else the
    training files the bundle recorded. None needed for dynamic quantization."""
    if spec.quantization != "static":
        return []
    if calibration is None:
        calibration = recorded(model, "calibration_files", "training files")
        if not calibration:
            raise TransferkitError("Static INT8 quantization calibrates on training inputs, and this bundle's recorded "
                                   "training files are gone: give some with --calibration (a folder or files).")
    if isinstance(calibration, (str, Path)) and Path(calibration).is_dir():  # every input under it, any layout
        from ..data.audio import AUDIO_SUFFIXES
        from ..data.medical import DICOM_SUFFIXES
        from ..data.sources import IMAGE_SUFFIXES

        calibration = files_under(Path(calibration), IMAGE_SUFFIXES | DICOM_SUFFIXES | AUDIO_SUFFIXES)[:256]
        if not calibration:
            raise TransferkitError("The --calibration folder holds no input files: give training images or "
                                   "recordings.")
    data, _ = model.task.encode(model, [calibration] if isinstance(calibration, (str, Path)) else list(calibration),
                                skip_bad)
    n = min(len(data), 256)
    return [spec.feeds(data, np.arange(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]


def files_under(folder: Path, suffixes: set[str]) -> list[Path]:
    """The files under ``folder`` (any depth) with one of ``suffixes``, sorted; hidden ones (a dot first: macOS's
    ``._photo.jpg`` copies) left out."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in suffixes)


def recorded(model: Any, key: str, what: str) -> list[str]:
    """The files a bundle recorded under ``key`` (``test_files``, ``calibration_files``) that still exist, with a
    warning naming how many of its ``what`` are gone."""
    from ..console import warn

    files = model.meta.get(key) or []
    present = [f for f in files if Path(f).is_file()]
    if present and len(present) < len(files):
        warn(f"{len(files) - len(present)} of the bundle's {len(files)} {what} are gone: using the {len(present)} "
             "left")
    return present


def quantize_int8(fp32: Path, dest: Path, method: str, calibration: list[dict[str, np.ndarray]],
                  ops: tuple[str, ...] | None = None) -> None:
    """onnxruntime post-training quantization of ``fp32`` into ``dest``: ``"static"`` (QDQ, INT8 weights per
    channel, UINT8 activations with min-max ranges from ``calibration`` batches: convolutions) or ``"dynamic"``
    (INT8 weights, activations quantized at run time: transformer encoders, whose activations vary too much per
    input for fixed ranges, and LSTMs, which static quantization leaves in fp32). ``ops``: quantize only these
    operator types (a detector: its convolutions, so that box coordinates and scores stay fp32); default, all that
    onnxruntime quantizes but :func:`head_nodes`."""
    import contextlib
    import io
    import logging

    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = dest.with_name(".prepared.onnx")
    # the classification head stays fp32: it is a few kB, and a probe's head folds the feature standardisation into
    # its weights, so they span up to 1e7 (dimensions that hardly vary); one INT8 scale for the whole matrix then
    # rounds every ordinary weight to zero (MiniLM on BBC News, head quantized: every text one class, 0.946 -> 0.200;
    # head in fp32: 0.948)
    head = [] if ops else head_nodes(onnx.load(str(fp32)))
    only = {"op_types_to_quantize": list(ops)} if ops else {}
    quiet = logging.getLogger()
    level = quiet.level
    try:
        quiet.setLevel(logging.ERROR)
        with contextlib.redirect_stdout(io.StringIO()):
            if method == "dynamic":
                # constants folded first (onnxruntime's basic graph optimisation): the dynamo exporter writes an
                # LSTM's weights as slices of its parameters, which the quantizer only sees as initializers once
                # folded. Weights only, so no shapes are needed; the recorded intermediate shapes trip the quantizer's
                # own shape inference (a transformer, an LSTM; torch 2.14, onnxruntime 1.31), so they go
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
                options.optimized_model_filepath = str(prepared)
                ort.InferenceSession(str(fp32), options, providers=["CPUExecutionProvider"])
                graph = onnx.load(str(prepared))
                del graph.graph.value_info[:]
                onnx.save(graph, str(prepared))
                quantize_dynamic(str(prepared), str(dest), weight_type=QuantType.QInt8, per_channel=False,
                                 nodes_to_exclude=head_nodes(graph))  # named as the folded graph names them
            else:  # static: shapes and graph optimisation first, as onnxruntime recommends
                quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
                batches = iter(calibration)

                class Batches(CalibrationDataReader):
                    def get_next(self) -> dict[str, np.ndarray] | None:
                        return next(batches, None)

                quantize_static(str(prepared), str(dest), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=head, **only)
    except Exception as err:  # noqa: BLE001 - onnxruntime's quantizer raises many kinds; one line for the user
        raise TransferkitError(f"INT8 quantization failed ({type(err).__name__}: {first_line(err)}): "
                               "export without --quantize.") from None
    finally:
        quiet.setLevel(level)
        prepared.unlink(missing_ok=True)
        for left in dest.parent.glob(".prepared*"):  # what the pre-processing left beside it
            left.unlink(missing_ok=True)


def head_nodes(graph: Any) -> list[str]:
    """What INT8 leaves in fp32: the classification head of an ONNX classifier (the last MatMul or Gemm that
    multiplies by weights, an initializer, not one between activations: the audio graph's average of its windows'
    logits comes after it), and every product with a float64 constant (an audio model's exact spectrogram)."""
    import onnx

    weights = {init.name for init in graph.graph.initializer}
    exact = {init.name for init in graph.graph.initializer if init.data_type == onnx.TensorProto.DOUBLE}
    products = [n for n in graph.graph.node if n.op_type in ("MatMul", "Gemm") and weights & set(n.input)]
    kept = [n for n in products if exact & set(n.input)] + [n for n in products if not exact & set(n.input)][-1:]
    # dynamic quantization first splits a Gemm into NAME_MatMul and NAME_Add, and matches the exclusions against
    # those names: without the second name the head was quantized after all
    return [name for n in kept for name in (n.name, *([f"{n.name}_MatMul"] if n.op_type == "Gemm" else []))]


def int8_share(path: Path) -> float:
    """The fraction of a model's weights (its float32, float16, bfloat16 and INT8/UINT8 initializers, by bytes)
    stored as INT8/UINT8. Integer index tables and float64 constants are not weights: they are an audio model's
    fixed spectrogram transform (``FramedMelSpectrogram``: its frame positions, its cosine, sine and mel matrices)."""
    import onnx
    from onnx import numpy_helper

    T = onnx.TensorProto
    weights = {T.FLOAT, T.FLOAT16, T.BFLOAT16, T.INT8, T.UINT8}
    total = small = 0
    for init in onnx.load(str(path)).graph.initializer:
        if init.data_type not in weights:
            continue
        size = numpy_helper.to_array(init).nbytes
        total += size
        if init.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
            small += size
    return small / max(1, total)


def int8_report(model: Any, targets: np.ndarray, fp32: np.ndarray, int8: np.ndarray, path: Path, method: str,
                max_drop: float, source: str) -> dict[str, Any]:
    """The INT8 model beside fp32 on the same labelled inputs; raises when it scores more than ``max_drop`` lower or
    holds under half its weights in INT8."""
    binary = bool(model.clinical and model.clinical.get("positive") is not None)
    multi = bool(model.multi_label)

    def score(probs: np.ndarray) -> float:
        if multi:  # threshold-free, as multi-label runs choose their models
            from ..evaluation.metrics import average_precisions

            ap = [a for a in average_precisions(targets, probs) if a is not None]
            return float(np.mean(ap)) if ap else float("nan")
        if not binary:
            return float((model.decide(probs) == targets).mean())
        from sklearn.metrics import roc_auc_score

        k = model.classes.index(model.clinical["positive"])
        return float(roc_auc_score(targets == k, probs[:, k])) if len(set(targets.tolist())) > 1 else float("nan")

    if multi:
        cut = model.label_thresholds()
        agreement = float(((fp32 >= cut) == (int8 >= cut)).all(1).mean())
    else:
        agreement = float((model.decide(fp32) == model.decide(int8)).mean())
    report = {"method": method, "metric": "map" if multi else "auroc" if binary else "accuracy",
              "inputs": int(len(targets)), "fp32": score(fp32), "int8": score(int8), "agreement": agreement,
              "max_abs_diff": float(np.abs(fp32 - int8).max()), "max_drop": max_drop,
              "int8_weight_share": int8_share(path), "file_mb": path.stat().st_size / 2**20,
              "fp32_file_mb": path.with_name("model.fp32.onnx").stat().st_size / 2**20, "source": source}
    if not np.isfinite([report["fp32"], report["int8"]]).all():
        raise TransferkitError(f"The check data ({source}) hold one class only (multi-label: no label both "
                               f"present and absent), so {report['metric']} cannot be measured and INT8 cannot be "
                               "compared with fp32: --check a labelled folder with both classes.")
    return judge_int8(report, source)


def judge_int8(report: dict[str, Any], source: str) -> dict[str, Any]:
    """``report`` (``int8_weight_share``, ``metric``, ``fp32``, ``int8``, ``max_drop``), or one line refusing an
    INT8 model that is not INT8 or scores more than ``max_drop`` below fp32."""
    max_drop = report["max_drop"]
    if report["int8_weight_share"] < 0.5:
        raise TransferkitError(f"The quantized model holds only {report['int8_weight_share']:.0%} of its weights in "
                               "INT8: it is not an INT8 model; export without --quantize.")
    if report["fp32"] - report["int8"] > max_drop:
        raise TransferkitError(f"INT8 scores {report['metric']} {report['int8']:.4f} against fp32's "
                               f"{report['fp32']:.4f} on {source}, a drop of {report['fp32'] - report['int8']:.4f} "
                               f"over --max-drop {max_drop:g}; nothing was written. Export fp32 (no --quantize).")
    return report


def reference_script(kind: str) -> str:
    """The ``predict.py`` of an exported folder for ``kind`` ("image", "text", "audio", "detection"):
    :mod:`transferkit.export.scripts`."""
    from importlib.resources import files

    return files("transferkit.export.scripts").joinpath(f"{kind}.py").read_text(encoding="utf-8")


def decision(model: Any) -> dict[str, Any]:
    """How probabilities become labels, for ``preprocessing.json``: multi-label and its threshold, or a medical
    model's positive class and operating threshold."""
    clinical = model.clinical or {}
    if clinical.get("positive") is not None:
        return {"multi_label": False, "positive": clinical["positive"], "threshold": float(clinical["threshold"])}
    return {"multi_label": bool(model.multi_label), "threshold": model.threshold}


def onnx_runtime() -> tuple[Any, Any]:
    """``(onnx, onnxruntime)``, or one line naming the ``export`` extra (:func:`transferkit.errors.need`)."""
    return need("onnx", "export", "Exporting"), need("onnxruntime", "export", "Exporting")


LABELLED_TABLES = {".csv", ".tsv", ".jsonl", ".json"}


OURS = {"model.onnx", "model.fp32.onnx", "labels.json", "preprocessing.json", "predict.py", "export.json",
        "tokenizer.json"}


def tidied(out: Path) -> Path:
    """``out``, once the leftovers of an export killed while writing it (``.NAME.tmp-*``) are removed (with a note)."""
    from ..console import info
    from ..rundir import tidy_leftovers

    for note in tidy_leftovers(out):
        info(note)
    return out


def check_out(out: Path) -> Path:
    """``out`` if an export may be written there, checked before any work: a new folder that can be made, an empty
    one, or an earlier export holding only what export writes (a re-export replaces it whole); never a folder inside
    a bundle (code there would make the bundle refuse to load), a link or a file."""
    if out.is_symlink():
        raise TransferkitError(f"--out {out} is a symbolic link: give the folder itself.")
    for folder in (out, *out.parents):
        if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
            raise TransferkitError(f"--out {out} is inside the bundle {folder}: export next to it, not into it.")
    if out.exists():
        if not out.is_dir():
            raise TransferkitError(f"--out {out} is a file: give a folder.")
        names = {p.name for p in out.iterdir()}
        if names and "export.json" not in names:
            raise TransferkitError(f"{out} exists and is not an exported model (no export.json): give a new or "
                                   "empty folder with --out; nothing there is replaced.")
        if names - OURS:
            raise TransferkitError(f"{out} holds {sorted(names - OURS)[0]}, which export did not write: a re-export "
                                   "replaces the folder whole, so move it out first or give another --out.")
    else:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TransferkitError(f"--out {out}: its folder cannot be made ({err.strerror or err}).") from None
    if not os.access(out.parent, os.W_OK):
        raise TransferkitError(f"--out {out}: {out.parent} is not writable.")
    return out


def is_labelled(source: Any) -> bool:
    """A labelled source (class folders, or a table with labels), as ``evaluate`` reads it, rather than inputs."""
    return isinstance(source, (str, Path)) and (Path(source).is_dir() or Path(source).suffix.lower() in LABELLED_TABLES)


def _check_data(model: Any, check: Any, skip_bad: bool) -> tuple[Any, str, np.ndarray | None]:
    """The data the parity is measured on, encoded as ``predict`` encodes, where it came from, and its labels (class
    indices) when known: a labelled folder, or the bundle's test files with the labels it recorded."""
    labels: list[str] | None = None
    if check is None:
        if getattr(model.task, "inputs", "files") == "strings":
            raise TransferkitError("A text bundle keeps no test texts: give texts to check the export with (--check "
                                   "a file with one text per line, or labelled texts: a folder, CSV/TSV/JSONL).")
        present = recorded(model, "test_files", "test files")
        if not present:
            raise TransferkitError("This bundle records no test files that still exist: give inputs to check the "
                                   "export with (--check).")
        if model.meta.get("test_labels"):
            label_of = dict(zip(model.meta["test_files"], model.meta["test_labels"], strict=True))
            labels = [label_of[f] for f in present]
        check, source = present, f"the bundle's test split ({len(present)} files)"
    else:
        source = str(check) if not isinstance(check, (list, tuple)) else f"{len(check)} given input(s)"
    if is_labelled(check):
        data = model.task.read_labelled(model, check, skip_bad)
        targets = data.targets.numpy()
    else:
        items = [check] if isinstance(check, (str, Path)) else list(check)
        data, _ = model.task.encode(model, items, skip_bad)
        targets = None
        if labels is not None:  # the recorded files are read as files: ``kept`` holds their positions
            targets = np.array([model.classes.index(labels[i]) for i in data.kept])
    if len(data) == 0:
        raise TransferkitError(f"No inputs to check the export with ({source}): give at least one.")
    return data, source, targets


def export_graph(graph: nn.Module, inputs: dict[str, torch.Tensor], dynamic: dict[str, dict[int, str]], path: Path,
                 opset: int, outputs: tuple[str, ...] = ("probabilities",), dynamo: bool = True) -> str:
    """``torch.onnx.export`` of ``graph`` on example ``inputs`` (by name, in ``forward``'s order) with ``dynamic``
    axes (input -> axis -> name; a name shared by inputs is one dimension), by the dynamo exporter (the TorchScript
    exporter when dynamo cannot trace the model or fixes a dynamic axis, or when ``dynamo`` is False: a model known
    to need it); returns which one wrote the file."""
    import inspect
    import io
    import warnings

    from torch.export import Dim

    dims: dict[str, Any] = {}
    shapes = {name: {axis: dims.setdefault(dim, Dim(dim)) for axis, dim in dynamic.get(name, {}).items()}
              for name in inputs}
    args = tuple(inputs.values())
    # a forward(*inputs) takes its dynamic shapes as one argument's, a forward(a, b) as one per argument
    varargs = any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(graph.forward).parameters.values())
    dynamic_shapes = (tuple(shapes.values()),) if varargs else tuple(shapes.values())
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), quiet_loggers():
        warnings.simplefilter("ignore")  # the exporters' progress lines and warnings are not the user's business
        first = "not tried: this model needs the TorchScript exporter"
        if dynamo:
            try:
                program = torch.onnx.export(graph, args, dynamo=True, input_names=list(inputs),
                                            output_names=list(outputs), dynamic_shapes=dynamic_shapes,
                                            opset_version=opset, verbose=False)
                program.save(str(path))
                fixed = fixed_axes(path, dynamic)
                if not fixed:
                    return "torch.onnx (dynamo)"
                # torch.export found the model's shape arithmetic valid for the example's sizes only (strides
                # rounding up: a detector's canvas), and torch.onnx then exported those sizes fixed, not failing
                first = f"it fixed {fixed[0]} to the example's size"
            except Exception as err:  # noqa: BLE001 - any tracing failure: fall back to the TorchScript exporter
                first = f"{type(err).__name__}: {first_line(err)}"
        try:
            torch.onnx.export(graph, args, str(path), dynamo=False, input_names=list(inputs),
                              output_names=list(outputs), dynamic_axes=dynamic, opset_version=opset)
            return "torch.onnx (TorchScript)"
        except Exception as err:  # noqa: BLE001 - reported in one line with the first exporter's reason
            raise TransferkitError(f"This model could not be exported to ONNX (dynamo exporter: {first}; TorchScript "
                                   f"exporter: {type(err).__name__}: {first_line(err)}).") from None


@contextlib.contextmanager
def quiet_loggers(names: tuple[str, ...] = ("onnx_ir", "onnxscript")) -> Iterator[None]:
    """The ONNX libraries' log warnings (notes of their graph optimisers) held back while exporting."""
    import logging

    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def fixed_axes(path: Path, dynamic: dict[str, dict[int, str]]) -> list[str]:
    """The axes that should be dynamic but that the ONNX file at ``path`` fixes to one size ("pixels axis 2")."""
    import onnx

    fixed = []
    for value in onnx.load(str(path), load_external_data=False).graph.input:
        dims = value.type.tensor_type.shape.dim
        fixed += [f"{value.name} axis {axis}" for axis in dynamic.get(value.name, {})
                  if axis < len(dims) and dims[axis].HasField("dim_value")]
    return fixed


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:300]


def session_for(path: Path) -> Any:
    """An onnxruntime CPU session of ``path``, or one line saying why onnxruntime refuses it."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime's own exception types: one line for the user
        raise TransferkitError(f"onnxruntime cannot load the exported {path.name} ({type(err).__name__}: "
                               f"{first_line(err)}); nothing was written. Report it with the bundle's backbone "
                               "name.") from None


def run_session(session: Any, spec: ExportSpec, data: Any, batch_size: int = 32) -> np.ndarray:
    """Probabilities of every row of ``data`` from an onnxruntime session, in batches (or as ``spec.run`` runs them)."""
    try:
        if spec.run is not None:
            return np.asarray(spec.run(session, data), dtype=np.float32)
        out = [session.run(["probabilities"], spec.feeds(data, np.arange(s, min(s + batch_size, len(data)))))[0]
               for s in range(0, len(data), batch_size)]
    except Exception as err:  # noqa: BLE001 - onnxruntime's own exception types: one line for the user
        raise TransferkitError(f"onnxruntime failed to run the exported model ({type(err).__name__}: "
                               f"{first_line(err)}); nothing was written.") from None
    return np.concatenate(out).astype(np.float32)


def compare(model: Any, torch_probs: np.ndarray, onnx_probs: np.ndarray, tolerance: float, source: str
            ) -> dict[str, Any]:
    """The parity figures; raises when they do not hold."""
    diff = float(np.abs(torch_probs - onnx_probs).max()) if np.isfinite(onnx_probs).all() else float("inf")
    if model.multi_label:
        cut = model.label_thresholds()
        same = (torch_probs >= cut) == (onnx_probs >= cut)
        disagree = int((~same.all(axis=1)).sum())
    else:
        disagree = int((model.decide(torch_probs) != model.decide(onnx_probs)).sum())
    if not diff <= tolerance or disagree:
        raise TransferkitError(f"The ONNX model differs from the bundle on {source}: probabilities by up to "
                               f"{diff:.1e} (limit {tolerance:g}), {disagree} decision(s) differ; nothing was "
                               "written. Report it with the bundle's backbone name.")
    return {"inputs": int(len(torch_probs)), "max_abs_diff": diff, "decisions_differ": disagree,
            "tolerance": tolerance, "source": source}
