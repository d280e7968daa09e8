"""The pre-training phase: train a backbone on a large source dataset, or continue a pretrained one's training on
unlabelled in-domain data (domain-adaptive pre-training), and write it where ``--backbone PATH`` finds it.

>>> import transferkit
>>> transferkit.pretrain("source-data/", arch="efficientnet_lite0", out="backbones/parts-v1")         # doctest: +SKIP
>>> transferkit.pretrain("scans/", method="simclr", init="efficientnet_lite0",
...                      out="backbones/scans-v1")                                                    # doctest: +SKIP
>>> transferkit.fit("target-data/", backbone="backbones/scans-v1")                                   # doctest: +SKIP

Data flow as in ``fit``: data (streamed, :mod:`.data`) -> backbone (registry) -> objective (:mod:`.methods`) ->
engine (:mod:`.loop`, Accelerate) -> report -> backbone folder. The same call runs on one CPU, one GPU, or several
processes under ``accelerate launch`` / ``torchrun``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import (MAX_COUNT, MAX_INPUT_SIZE, MAX_SEED, MAX_TEXT_TOKENS, MIN_INPUT_SIZE, MIN_TEXT_TOKENS,
                      TransferkitError, check_number, check_precision)
from ..rundir import holds_output

# per method: epochs, global batch, learning rate (random start, pretrained start), weight decay, temperature
DEFAULTS: dict[str, dict[str, Any]] = {
    "supervised": {"epochs": 10, "batch_size": 128, "lr": (2e-3, 5e-4), "weight_decay": 0.05},
    "simclr": {"epochs": 20, "batch_size": 128, "lr": (1e-3, 2e-4), "weight_decay": 1e-4},
    "mlm": {"epochs": 3, "batch_size": 32, "lr": (5e-4, 5e-5), "weight_decay": 0.01, "max_length": 128},
    "simcse": {"epochs": 1, "batch_size": 64, "lr": (1e-4, 3e-5), "weight_decay": 0.0, "max_length": 64},
}


@dataclass
class PretrainResult:
    """Where the backbone was written, and what the run measured (also in ``path/pretrain.json``)."""

    path: Path
    metrics: dict[str, Any]

    def __repr__(self) -> str:
        return f"PretrainResult(path={str(self.path)!r}, method={self.metrics.get('method')!r})"


@holds_output("out", marks=("pretrain.json", "checkpoints"))
def pretrain(
    data: str | Path,
    *,
    method: str = "supervised",
    arch: str | None = None,
    init: str | None = None,
    out: str | Path = "backbones/latest",
    epochs: int | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    image_size: int | None = None,
    max_length: int | None = None,
    val_fraction: float = 0.05,
    label_smoothing: float = 0.0,
    checkpoint_every: int = 200,
    log_every: int = 50,
    resume: bool = False,
    seed: int = 0,
    precision: str = "auto",
    workers: int | None = None,
    skip_bad: bool = False,
    encoding: str = "utf-8",
    log_with: str | list[str] | None = None,
    log_dir: str | Path | None = None,
) -> PretrainResult:
    """Pre-train a backbone on ``data`` and write it to ``out``; ``fit(..., backbone=out)`` then transfers it.

    ``method``: ``supervised`` (labelled images: class folders or a CSV of ``path,label``), ``simclr`` (unlabelled
    images: any folder of images), ``mlm`` or ``simcse`` (unlabelled texts: a ``.txt`` file with one document per
    line, a ``.jsonl`` with a ``text`` field, or a folder of ``.txt`` files). See :mod:`.methods` for what each does.

    Start: ``arch`` names an architecture trained from random weights (any image backbone name the registry knows:
    ``efficientnet_lite0``, ``timm:resnet18``, ``torchvision:resnet18`` ...); ``init`` names a backbone whose
    pretrained weights are the start (domain-adaptive pre-training; texts always start from one). From random
    weights, the normalisation (mean, std) is measured on the data; from a pretrained start it stays the backbone's.

    Length: ``epochs`` (method default) or ``steps``; ``batch_size`` is the global batch, split over processes.
    ``image_size`` sets the input resolution (default: the architecture's), ``max_length`` the token window that
    training reads from each document (the saved encoder keeps its own input limit).
    Supervised runs hold out ``val_fraction`` of the images and report their accuracy after each epoch;
    ``label_smoothing`` (default 0) smooths their targets, which tends to make the features transfer worse.

    A checkpoint is written every ``checkpoint_every`` steps and after each epoch under ``out/checkpoints``;
    ``resume=True`` continues from it (also after ``kill -9``) and ends with the same weights (bit for bit on CPUs).
    ``out`` is replaced, atomically, only when training has finished: it then holds the backbone, ``pretrain.json``
    (settings, source data record, log), ``pretrain_curve.png``, ``report.md`` and ``log.txt``, and keeps what an
    earlier run there did not write (notes). ``out`` is held by one run at a time; a folder holding files but no
    pre-training run (no ``pretrain.json`` or ``checkpoints``), or the current folder, is refused before any work.
    ``log_with`` (``tensorboard``, ``mlflow``, ``all``) tracks the settings, each logged step and evaluation
    (:mod:`transferkit.engine.tracking`), beside ``out`` or in ``log_dir``.
    """
    call = dict(locals())  # every argument, for run.yaml
    from ..engine.tracking import parse_log_with

    parse_log_with(log_with)  # a missing package fails before any work
    from ..engine.accel import is_main_process, make_accelerator
    from .loop import CHECKPOINT, read_checkpoint
    from .methods import METHODS

    if method not in METHODS:
        raise TransferkitError(f"Unknown pre-training method {method!r}: use one of {', '.join(METHODS)}.")
    modality = METHODS[method]
    if epochs is not None and steps is not None:
        raise TransferkitError("Give --epochs or --steps, not both.")
    for name, value in (("epochs", epochs), ("steps", steps), ("batch_size", batch_size),
                        ("checkpoint_every", checkpoint_every), ("log_every", log_every)):
        if value is not None:
            check_number(name, value, low=1, high=MAX_COUNT, whole=True)
    for name, value in (("lr", lr), ("weight_decay", weight_decay)):
        if value is not None:
            check_number(name, value, low=0, low_open=name == "lr", example="1e-4" if name == "lr" else "0.01")
    check_number("label_smoothing", label_smoothing, low=0, high=1, high_open=True, example="0.1")
    check_number("val_fraction", val_fraction, low=0, high=0.5, high_open=True, example="0.1")
    check_number("seed", seed, low=0, high=MAX_SEED, whole=True, example="0")
    check_precision(precision)
    corpus = CORPORA[modality]
    if arch is not None and not corpus.random_start:
        raise TransferkitError(f"{corpus.title} pre-training continues a pretrained encoder: pass --init (e.g. "
                               "all-MiniLM-L6-v2), not --arch.")
    if arch is not None and init is not None:
        raise TransferkitError("Give --arch (random start) or --init (pretrained start), not both.")
    if image_size is not None:
        check_number("image_size", image_size, low=MIN_INPUT_SIZE, high=MAX_INPUT_SIZE, whole=True, example="224")
    if max_length is not None:
        check_number("max_length", max_length, low=MIN_TEXT_TOKENS, high=MAX_TEXT_TOKENS, whole=True, example="128")
    out = Path(out)
    ckpt_dir = out / "checkpoints"
    state_exists = (ckpt_dir / CHECKPOINT).is_file()
    if state_exists and not resume:
        raise TransferkitError(f"{out} holds a checkpoint of an interrupted run: pass --resume to continue it, or "
                               "choose another --out.")
    if resume and not state_exists and (out / "pretrain.json").is_file():
        raise TransferkitError(f"{out} holds a finished pre-training run, nothing to resume: choose another --out (or "
                               "delete it to train again).")
    d = DEFAULTS[method]
    accelerator = make_accelerator(precision, seed=seed)
    world = accelerator.num_processes

    window = max_length or d.get("max_length")  # texts: the token window training reads from each document
    source, val_source, backbone = corpus.setup(data, method=method, arch=arch, init=init, image_size=image_size,
                                                val_fraction=val_fraction, seed=seed, skip_bad=skip_bad,
                                                window=window, encoding=encoding)
    start = (backbone.spec.to_dict() if backbone.spec.weights != "random"
             else {"arch": arch or "efficientnet_lite0", "weights": "random"})
    global_batch = batch_size or d["batch_size"]
    if batch_size is None:  # the default batch, shrunk to fit a small dataset and divided evenly over the processes
        global_batch = max(world, min(global_batch, len(source)) // world * world)
    from .data import StepSampler

    probe = StepSampler(len(source), global_batch, 1, world=world, seed=seed)
    total_steps = steps or (epochs or d["epochs"]) * probe.steps_per_epoch
    lr = lr if lr is not None else d["lr"][0 if backbone.spec.weights == "random" else 1]
    weight_decay = d["weight_decay"] if weight_decay is None else weight_decay
    settings = {
        "method": method, "data": source.record(), "arch": arch, "init": init, "global_batch": global_batch,
        "total_steps": total_steps, "lr": lr, "weight_decay": weight_decay, "seed": seed,
        "input": corpus.input_record(backbone, window),
        "val_examples": len(val_source) if val_source is not None else 0, "precision": str(accelerator.mixed_precision),
        **({"label_smoothing": label_smoothing} if method == "supervised" else {}),
    }
    state = read_checkpoint(ckpt_dir) if state_exists else None
    if state is not None:
        _check_same_run(state["settings"], settings, out)
    elif resume and is_main_process(accelerator):
        from ..console import info

        info(f"no checkpoint in {ckpt_dir}: starting from step 0")

    from .methods import make_method

    options = {"num_classes": len(source.classes), "label_smoothing": label_smoothing} if method == "supervised" else {}
    obj = make_method(method, backbone, accelerator, **options)
    from ..engine.optim import adamw, param_groups, warmup_cosine

    optimizer = adamw(param_groups([list(obj.model.parameters())], [], lr, weight_decay), accelerator.device, lr=lr)
    scheduler = warmup_cosine(optimizer, total_steps, max(1, total_steps // 20))
    workers = _workers(workers, world)
    make_loader = functools.partial(_loader, method=method, source=source, backbone=backbone, global_batch=global_batch,
                                    total_steps=total_steps, rank=accelerator.process_index, world=world, seed=seed,
                                    workers=workers, device=accelerator.device, encoding=encoding, window=window,
                                    skip_bad=skip_bad)
    from .loop import Plan, run

    plan = Plan(total_steps, probe.steps_per_epoch, global_batch, checkpoint_every, log_every, seed,
                clip_grad=corpus.clip_grad)
    evaluate = _image_evaluator(val_source, source.classes, backbone, accelerator, workers) if val_source else None
    if is_main_process(accelerator):
        from ..console import info

        info(f"pre-training {method}: {len(source):,} {corpus.unit}, "
             f"{total_steps:,} steps of {global_batch} on {world} process(es), start: "
             f"{start.get('name') or start['arch'] + ' (random weights)'}")
    from ..engine.tracking import tracking

    with tracking(log_with if is_main_process(accelerator) else None, log_dir, out, None,
                  {"command": "pretrain", **settings}) as tracker:
        with tracker.listen() if tracker is not None else contextlib.nullcontext():
            record = run(obj, optimizer, scheduler, make_loader, accelerator, plan, checkpoint_dir=ckpt_dir,
                         state=state, settings=settings, evaluate=evaluate, log_file=ckpt_dir / "log.txt")
        if tracker is not None:
            tracker.finish({"seconds": record["seconds"], "samples_per_s": record["sessions"][-1]["samples_per_s"]},
                           [ckpt_dir / "log.txt"])
    metrics = {
        **settings, "modality": modality, "epochs": round(total_steps / probe.steps_per_epoch, 3),
        "steps_per_epoch": probe.steps_per_epoch, "processes": world, "precision": str(accelerator.mixed_precision),
        "device": str(accelerator.device), "start": start,
        "preprocess": backbone.preprocess.to_dict(), "record": record, "seconds": record["seconds"],
        "samples_per_s": record["sessions"][-1]["samples_per_s"], "metric": obj.metric,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if is_main_process(accelerator):
        _export(obj, backbone, metrics, out, ckpt_dir, _run_file(call, metrics))
    accelerator.wait_for_everyone()
    return PretrainResult(out, metrics)


def _check_same_run(saved: dict, settings: dict, out: Path) -> None:
    order = sorted(settings, key=lambda k: k == "data")  # a changed seed also changes the split: name the seed
    differ = [k for k in order if json.dumps(saved.get(k), sort_keys=True) != json.dumps(settings[k], sort_keys=True)]
    if differ:
        k = differ[0]
        if k == "data":
            then, now = saved["data"], settings["data"]
            raise TransferkitError(f"The checkpoint in {out} was made on other data ({then['examples']:,} examples, "
                                   f"listing {then['listing_sha256'][:12]} then; {now['examples']:,}, "
                                   f"{now['listing_sha256'][:12]} now): resume on the same data, or "
                                   "choose another --out.")
        raise TransferkitError(f"The checkpoint in {out} was made with other settings ({k}: {saved.get(k)!r} then, "
                               f"{settings[k]!r} now): rerun with the same settings to resume, or "
                               "choose another --out.")


def _workers(workers: int | None, world: int) -> int:
    if workers is not None:
        return max(0, workers)
    return min(4, max(0, (os.cpu_count() or 1) // world - 1))


def _image_setup(data, *, method, arch, init, image_size, val_fraction, seed, skip_bad, **_):
    """Images: the labelled or unlabelled stream (a validation share held out for supervised runs) and the
    backbone, from a pretrained ``init`` or random ``arch`` weights with the data's own mean and std."""
    from ..backbones.registry import build, create_backbone, resolve
    from ..data.medical import need_readers
    from ..data.sources import stratified_split
    from .data import estimate_stats, image_source

    source = image_source(data, labelled=method == "supervised", skip_bad=skip_bad)
    need_readers(source.items)  # DICOM or NIfTI among them: their reader, or one line, before any step
    if getattr(source, "multi_label", False):
        raise TransferkitError("Supervised pre-training takes one label per image; these labels are lists "
                               "(multi-label): give one label per row, or pre-train self-supervised.")
    val = None
    if method == "supervised" and val_fraction > 0:
        parts = stratified_split(source.labels, {"val": val_fraction}, seed)
        val, source = source.subset(parts["val"]), source.subset(parts["rest"])
    if init is not None:
        backbone = create_backbone(init, modality="image")
        if image_size:
            backbone.preprocess = dataclasses.replace(backbone.preprocess, input_size=(image_size, image_size))
        return source, val, backbone
    spec = resolve(arch or "efficientnet_lite0")
    backbone = build(spec, pretrained=False)
    if backbone.modality != "image":
        raise TransferkitError(f"{arch!r} is not an image architecture: pick one such as efficientnet_lite0 "
                               "or timm:resnet18.")
    backbone.spec = dataclasses.replace(spec, weights="random")
    backbone.set_source_head(None)
    pre = backbone.preprocess
    if image_size:
        pre = dataclasses.replace(pre, input_size=(image_size, image_size))
    pre = dataclasses.replace(pre, crop_pct=1.0)  # the whole image: there is no ImageNet-style border to drop
    mean, std = estimate_stats(source, pre, seed=seed)
    backbone.preprocess = dataclasses.replace(pre, mean=mean, std=std)
    return source, val, backbone


def _text_setup(data, *, init, window, encoding, **_):
    """Texts: the document stream and the pretrained encoder it continues (``window`` tokens per document)."""
    max_length = window
    from ..backbones.registry import create_backbone
    from ..backbones.text import DEFAULT_TEXT_BACKBONE
    from .data import text_source

    source = text_source(data, encoding)
    backbone = create_backbone(init or DEFAULT_TEXT_BACKBONE, modality="text")
    limit = backbone.max_length_limit()
    if max_length > limit:
        raise TransferkitError(f"--max-length {max_length} is longer than {backbone.spec.name} reads ({limit} tokens).")
    # max_length is the training window only: the saved encoder keeps the input length it started with
    return source, None, backbone


def _write_image_backbone(backbone: Any, folder: Path, provenance: dict) -> None:
    from ..backbones.checkpoint import write_backbone_files

    write_backbone_files(backbone, folder, provenance)


def _write_text_backbone(backbone: Any, folder: Path, provenance: dict) -> None:
    from ..backbones.text import write_text_backbone

    write_text_backbone(backbone, folder)


@dataclass(frozen=True)
class Corpus:
    """What differs between pre-training on images and on texts (the method decides which, see ``METHODS``)."""

    title: str
    unit: str  # what one example is called in messages
    setup: Callable[..., tuple[Any, Any, Any]]  # data -> (source, validation source or None, backbone)
    write: Callable[[Any, Path, dict], None]  # the trained backbone -> a folder ``--backbone PATH`` reads
    input_record: Callable[[Any, int | None], Any]  # what the record says the backbone read
    clip_grad: float | None = None  # transformers train with clipped gradients; the CNNs here do not need it
    random_start: bool = True  # an --arch start from random weights is possible


CORPORA: dict[str, Corpus] = {
    "image": Corpus("Image", "images", _image_setup, _write_image_backbone,
                    lambda backbone, window: list(backbone.preprocess.input_size)),
    "text": Corpus("Text", "documents", _text_setup, _write_text_backbone, lambda backbone, window: window,
                   clip_grad=1.0, random_start=False),
}


def _loader(start: int, *, method, source, backbone, global_batch, total_steps, rank, world, seed, workers, device,
            encoding, window, skip_bad):
    from torch.utils.data import DataLoader

    from ..engine.accel import loader_options

    from .data import ImageAugment, ImageStream, StepSampler, TextStream, pad_tokens

    sampler = StepSampler(len(source), global_batch, total_steps, start, rank, world, seed)
    if method in ("supervised", "simclr"):
        dataset = ImageStream(source, backbone.preprocess, ImageAugment(method), seed,
                              views=2 if method == "simclr" else 1, skip_bad=skip_bad)
        collate = None
    else:
        dataset = TextStream(source, backbone.tokenizer, window, seed, mlm=method == "mlm", encoding=encoding,
                             vocab_size=getattr(backbone.body.config, "vocab_size", None))
        collate = functools.partial(pad_tokens, pad_id=backbone.tokenizer.pad_token_id)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, prefetch_factor=4 if workers > 0 else None,
                      **loader_options(workers, device))


def _image_evaluator(val, classes, backbone, accelerator, workers):
    """Validation accuracy and loss of the supervised model: each process scores its share, sums are reduced."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from .data import ImageAugment, ImageStream
    from ..data.images import image_prepare

    dataset = ImageStream(val, backbone.preprocess, ImageAugment("none"), classes=classes)
    prepare = image_prepare(backbone.preprocess)
    mine = Subset(dataset, list(range(accelerator.process_index, len(dataset), accelerator.num_processes)))

    @torch.no_grad()
    def evaluate(model) -> dict:
        model.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=accelerator.device)
        for x, y in DataLoader(mine, batch_size=256, num_workers=workers):
            x, y = x.to(accelerator.device), y.to(accelerator.device)
            with accelerator.autocast():
                logits = model(prepare(x)).float()
            loss = torch.nn.functional.cross_entropy(logits, y, reduction="sum")
            sums += torch.stack([loss.double(), (logits.argmax(1) == y).sum().double(),
                                 torch.tensor(len(y), dtype=torch.float64, device=y.device)])
        loss, right, n = accelerator.reduce(sums, "sum").tolist()
        return {"val_loss": loss / max(n, 1), "val_accuracy": right / max(n, 1), "val_n": int(n)}

    return evaluate


def _run_file(call: dict, metrics: dict) -> bytes:
    """The run's ``run.yaml`` (:mod:`transferkit.runfile`): ``call``, its arguments, with the precision it came to."""
    from ..runfile import recorded, resolve_defaults, settings_file

    settings = resolve_defaults(recorded(call, paths=("init", "log_dir")), metrics)
    resolved = {k: metrics.get(k) for k in ("modality", "epochs", "total_steps", "global_batch", "lr", "precision",
                                            "device", "processes")}
    return settings_file("pretrain", call["data"], settings, {**resolved, "start": metrics["start"]})


def _export(obj, backbone, metrics: dict, out: Path, ckpt_dir: Path, run_file: bytes) -> None:
    """Write the backbone, the run's record and ``run_file`` (run.yaml) to ``out`` in one rename (the checkpoints go
    with the old folder; what an earlier run did not write, such as notes, is carried over)."""
    from ..rundir import replaced
    from .report import curve_png, report_md

    log = (ckpt_dir / "log.txt").read_text(encoding="utf-8") if (ckpt_dir / "log.txt").is_file() else ""
    provenance = {k: metrics[k] for k in ("method", "data", "start", "total_steps", "epochs", "global_batch", "lr",
                                          "processes", "created")}
    last = metrics["record"]["log"][-1] if metrics["record"]["log"] else {}
    provenance["final"] = {"loss": last.get("loss"), metrics["metric"]: last.get("metric"),
                           **({k: v for k, v in metrics["record"]["evaluations"][-1].items() if k.startswith("val")}
                              if metrics["record"]["evaluations"] else {})}
    metrics["provenance"] = provenance
    with replaced(out, ours=("checkpoints",)) as tmp:
        CORPORA[metrics["modality"]].write(backbone, tmp, provenance)
        from ..io import write_json

        write_json(tmp / "pretrain.json", metrics)
        (tmp / "log.txt").write_text(log, encoding="utf-8")
        (tmp / "run.yaml").write_bytes(run_file)
        curve_png(metrics, tmp / "pretrain_curve.png")
        (tmp / "report.md").write_text(report_md(metrics, out), encoding="utf-8")
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # already gone with the old folder; a leftover would block a rerun
