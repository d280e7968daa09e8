"""Pre-training data that streams: file paths (or byte offsets into a text file) are listed once; each example is
read and decoded only when a batch needs it, in the loader's worker processes. A million-image archive costs a
list of paths in memory, not a million decoded images.

Everything random here (the crop, the flip, the colour jitter, which tokens are masked) is drawn from a generator
seeded by ``(seed, epoch, example)``. The data a step sees therefore depends only on the step number, not on the
number of processes, loader workers or restarts, which is what makes a resumed run finish with the same weights
as an uninterrupted one.
"""

from __future__ import annotations

import array
import hashlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..backbones.protocol import PreprocessConfig
from ..errors import DataError

_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant: spreads (seed, epoch, index, view) over the generator's seed space


def example_seed(seed: int, epoch: int, index: int, view: int = 0) -> int:
    """A 63-bit seed for one example's random choices in one epoch (and one view of it)."""
    h = 0
    for v in (seed, epoch, index, view):
        h = ((h ^ (v & 0xFFFFFFFFFFFFFFFF)) * _MIX + 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF
    return h >> 1


@dataclass
class Source:
    """What a pre-training run reads: items (image paths, or text documents as ``(file, offset)``), optional labels,
    and a record of where they came from for the backbone's provenance."""

    kind: str  # "image" or "text"
    items: Any  # image paths (list of str); texts: an (N, 2) int64 array of (file number, byte offset or -1)
    labels: list[str] | None
    origin: str
    classes: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # texts: the files ``items`` point into

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, idx: list[int]) -> Source:
        labels = [self.labels[i] for i in idx] if self.labels is not None else None
        return Source(self.kind, [self.items[i] for i in idx], labels, self.origin, self.classes, self.files)

    def record(self) -> dict[str, Any]:
        """Provenance: path, size, classes and a fingerprint of the listing (file names; for texts also each
        document's byte offset), not of the contents."""
        h = hashlib.sha256()
        for f in self.files:
            h.update(f.encode("utf-8", "surrogatepass") + b"\0")
        if isinstance(self.items, np.ndarray):
            h.update(np.ascontiguousarray(self.items, dtype=np.int64).tobytes())
        else:
            for item in self.items:
                h.update(str(item).encode("utf-8", "surrogatepass") + b"\0")
        out: dict[str, Any] = {"path": self.origin, "kind": self.kind, "examples": len(self.items),
                               "listing_sha256": h.hexdigest()}
        if self.labels is not None:
            counts: dict[str, int] = {}
            for y in self.labels:
                counts[y] = counts.get(y, 0) + 1
            out["classes"] = self.classes
            out["per_class"] = dict(sorted(counts.items()))
        return out


# ---- images -------------------------------------------------------------------------------------------------------

def image_source(path: str | Path, labelled: bool, skip_bad: bool = False) -> Source:
    """Images for pre-training. Labelled (supervised): class folders or a CSV/TSV/JSONL of ``path,label`` (read by
    :func:`~transferkit.data.sources.load_splits`' readers). Unlabelled (self-supervised): every image file under
    a folder, at any depth, or the ``path`` column of a table; labels there are ignored."""
    from ..data.medical import is_medical
    from ..data.sources import IMAGE_SUFFIXES, read_class_folders, read_table

    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"Pre-training data {root} does not exist: pass a folder of images or a CSV/JSONL of paths.")
    if labelled:
        if root.is_file():
            ds, given = read_table(root, skip_bad=skip_bad)
            for part in given.values():  # a split column: pre-training uses every labelled row
                ds.items += part.items
                ds.labels += part.labels
        else:
            dirs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
            if not dirs:
                raise DataError(f"{root} has no class folders: supervised pre-training needs labels ({root}/<label>/"
                                "*.png, or a CSV of path,label); for unlabelled images use --method simclr.")
            ds = read_class_folders(root, skip_bad=skip_bad)
        classes = sorted(set(ds.labels))
        if len(classes) < 2:
            raise DataError(f"{root} has a single class ({classes[0]}): supervised pre-training needs two or more; "
                            "for unlabelled images use --method simclr.")
        return Source("image", [str(p) for p in ds.items], list(ds.labels), str(root), classes)
    if root.is_file():
        ds, given = read_table(root, skip_bad=skip_bad, labelled=False)
        items = [str(p) for p in ds.items] + [str(p) for part in given.values() for p in part.items]
        return Source("image", items, None, str(root))
    items = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            f = Path(dirpath) / name
            if name.startswith("."):
                continue
            if f.suffix.lower() in IMAGE_SUFFIXES or is_medical(f):
                items.append(str(f))
    if not items:
        raise DataError(f"{root} holds no image files (at any depth): pass a folder of images.")
    return Source("image", items, None, str(root))


@dataclass(frozen=True)
class ImageAugment:
    """Per-example augmentation, drawn from a seeded generator. ``supervised``: random resized crop (scale
    0.35-1) and flip. ``simclr``: SimCLR's crop (scale 0.2-1), flip, colour jitter (p=0.8) and greyscale (p=0.2)."""

    kind: str = "supervised"  # "supervised", "simclr" or "none" (validation: the backbone's resize and centre crop)
    hflip: bool = True

    def __call__(self, img, pre: PreprocessConfig, g: torch.Generator) -> torch.Tensor:
        from PIL import Image

        from ..data.images import INTERPOLATION, resize_center_crop

        if self.kind == "none":
            return torch.from_numpy(resize_center_crop(img, pre)).permute(2, 0, 1)
        h, w = pre.input_size
        scale = (0.2, 1.0) if self.kind == "simclr" else (0.35, 1.0)
        box = _crop_box(img.size, scale, g)
        img = img.resize((w, h), INTERPOLATION.get(pre.interpolation, Image.Resampling.BICUBIC), box=box)
        if self.hflip and _rand(g) < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        if self.kind == "simclr":
            x = _colour(x, g)
        return x


def _rand(g: torch.Generator) -> float:
    return float(torch.rand((), generator=g))


def _crop_box(size: tuple[int, int], scale: tuple[float, float], g: torch.Generator) -> tuple[int, int, int, int]:
    """A random crop of ``scale`` times the area and aspect ratio 3/4-4/3 (Inception-style); whole image if none
    fits."""
    width, height = size
    area = width * height
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * _rand(g))
        ratio = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * _rand(g))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            left = int(_rand(g) * (width - w + 1))
            top = int(_rand(g) * (height - h + 1))
            return left, top, left + w, top + h
    return 0, 0, width, height


def _colour(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """SimCLR's colour distortion on a uint8 image: jitter (p=0.8, strength 0.4/0.4/0.4/0.1, random order), then
    greyscale (p=0.2)."""
    from torchvision.transforms.v2 import functional as F

    if _rand(g) < 0.8:
        ops = [(F.adjust_brightness, 0.4), (F.adjust_contrast, 0.4), (F.adjust_saturation, 0.4), (F.adjust_hue, 0.1)]
        for k in torch.randperm(4, generator=g).tolist():
            fn, s = ops[k]
            factor = (2 * _rand(g) - 1) * s if fn is F.adjust_hue else 1 + (2 * _rand(g) - 1) * s
            x = fn(x, factor)
    if _rand(g) < 0.2:
        x = F.rgb_to_grayscale(x, num_output_channels=3)
    return x


class ImageStream(Dataset):
    """Images decoded on access. An index is ``epoch * len(source) + i`` (see :class:`StepSampler`), so each example's
    augmentation is drawn from its own ``(seed, epoch, i)`` generator. ``views=2`` returns two augmented views
    (contrastive methods)."""

    def __init__(self, source: Source, pre: PreprocessConfig, augment: ImageAugment, seed: int = 0, views: int = 1,
                 classes: list[str] | None = None, skip_bad: bool = False):
        self.source, self.pre, self.augment, self.seed, self.views = source, pre, augment, seed, views
        self.skip_bad = skip_bad
        index = {c: k for k, c in enumerate(classes or source.classes)}
        self.targets = [index[y] for y in source.labels] if source.labels is not None else None

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: int) -> tuple[torch.Tensor, int]:
        from ..data.images import load_pil

        epoch, i = divmod(int(key), len(self.source))
        for tries in range(10):
            try:
                img, _ = load_pil(Path(self.source.items[i]), self.pre.window, self.pre.slices)
                break
            except DataError as err:
                if not self.skip_bad or tries == 9:
                    raise
                from ..console import warn

                # the next example stands in: the same one at every visit, so resuming stays exact
                warn(f"{err} (skipped: {self.source.items[(i + 1) % len(self.source)]} is used in its place)")
                i = (i + 1) % len(self.source)
        views = []
        for v in range(self.views):
            g = torch.Generator().manual_seed(example_seed(self.seed, epoch, i, v))
            views.append(self.augment(img, self.pre, g))
        x = views[0] if self.views == 1 else torch.stack(views)
        return x, (self.targets[i] if self.targets is not None else -1)


def estimate_stats(source: Source, pre: PreprocessConfig, n: int = 1000, seed: int = 0) -> tuple[tuple, tuple]:
    """Per-channel mean and std of up to ``n`` images (at the input size), for a backbone trained from scratch:
    its normalisation should fit its own data, not ImageNet's."""
    from ..data.images import load_pil, resize_center_crop

    rng = np.random.default_rng(seed)
    pick = rng.choice(len(source), size=min(n, len(source)), replace=False)
    sums, squares, count = np.zeros(3), np.zeros(3), 0
    for i in pick:
        img, _ = load_pil(Path(source.items[i]), pre.window, pre.slices)
        x = resize_center_crop(img, pre).reshape(-1, 3).astype(np.float64) / 255.0
        sums += x.sum(0)
        squares += (x**2).sum(0)
        count += len(x)
    mean = sums / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 1e-6))
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(max(v, 0.02)), 4) for v in std)


# ---- texts --------------------------------------------------------------------------------------------------------

TEXT_FILE_SUFFIXES = (".txt", ".jsonl", ".ndjson")


def text_source(path: str | Path, encoding: str = "utf-8") -> Source:
    """Unlabelled documents: a ``.txt`` file with one document per line (blank lines skipped), a ``.jsonl`` with a
    ``text`` field per line, or a folder whose ``.txt`` files are one document each. Only byte offsets are kept."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"Pre-training texts {root} do not exist: pass a .txt file (one document per line), a .jsonl "
                        "with a text field, or a folder of .txt files.")
    if root.is_dir():
        files = sorted(str(f) for f in root.rglob("*.txt")
                       if not any(p.startswith(".") for p in f.relative_to(root).parts))
        if not files:
            raise DataError(f"{root} holds no .txt files: pass a folder of .txt documents or a .txt file "
                            "with one per line.")
        items = np.stack([np.arange(len(files)), np.full(len(files), -1)], axis=1).astype(np.int64)
        return Source("text", items, None, str(root), files=files)
    if root.suffix.lower() not in TEXT_FILE_SUFFIXES:
        raise DataError(f"{root} is not a .txt or .jsonl file: give one document per line (.txt) or a text field "
                        "per line (.jsonl).")
    offsets = array.array("q")  # 8 bytes per document, not a Python object each
    with root.open("rb") as f:
        offset = 0
        for line in f:
            if line.strip():
                offsets.append(offset)
            offset += len(line)
    if not offsets:
        raise DataError(f"{root} has no non-empty lines: put one document per line.")
    starts = np.frombuffer(offsets, dtype=np.int64)
    return Source("text", np.stack([np.zeros_like(starts), starts], axis=1), None, str(root), files=[str(root)])


MAX_DOCUMENT_BYTES = 10_000_000  # a longer .txt file is read only this far


def read_document(path: str, offset: int, encoding: str = "utf-8") -> str:
    """The text of one document (a whole file, up to 10 MB, when ``offset`` is -1, else the line at ``offset``)."""
    try:
        if offset < 0:
            with open(path, "rb") as f:
                return f.read(MAX_DOCUMENT_BYTES).decode(encoding, errors="replace")
        with open(path, "rb") as f:
            f.seek(offset)
            line = f.readline().decode(encoding, errors="replace")
    except OSError as err:
        raise DataError(f"Cannot read {path} ({err.strerror}): check the file is still there.") from None
    if path.lower().endswith((".jsonl", ".ndjson")):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"{path} at byte {offset}: the line is not JSON: fix it or remove it.") from None
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise DataError(f"{path} at byte {offset}: no 'text' field: give each line a text field.")
        return text
    return line


class TextStream(Dataset):
    """Documents read on access and tokenised to a window of ``max_length`` tokens, whose start is drawn from the
    ``(seed, epoch, i)`` generator (long documents contribute different passages in different epochs). With ``mlm``,
    15% of the tokens are selected for prediction (80% of them masked, 10% replaced, 10% kept, as in BERT)."""

    def __init__(self, source: Source, tokenizer: Any, max_length: int, seed: int = 0, mlm: bool = False,
                 encoding: str = "utf-8", vocab_size: int | None = None):
        self.source, self.tokenizer, self.max_length, self.seed, self.mlm, self.encoding = (
            source, tokenizer, max_length, seed, mlm, encoding)
        self.vocab_size = vocab_size or len(tokenizer)
        self.special = {int(t) for t in tokenizer.all_special_ids}
        # the special tokens the tokenizer puts around a text ([CLS] ... [SEP] for BERT), found by tokenising one word
        bare = tokenizer("a", add_special_tokens=False)["input_ids"]
        full = tokenizer("a", add_special_tokens=True)["input_ids"]
        at = next((k for k in range(len(full)) if full[k : k + len(bare)] == bare), 0)
        self.prefix, self.suffix = list(full[:at]), list(full[at + len(bare):])
        if max_length < len(self.prefix) + len(self.suffix) + 1:
            raise DataError(f"--max-length {max_length} leaves no room for text between the special tokens: "
                            "use 16 or more.")
        if mlm and tokenizer.mask_token_id is None:
            raise DataError("This tokenizer has no mask token, so it cannot train a masked-language model: use "
                            "--method simcse.")

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = divmod(int(key), len(self.source))
        g = torch.Generator().manual_seed(example_seed(self.seed, epoch, i))
        # about 100 windows' worth of characters: enough for a random passage, bounded for a huge line
        file, offset = self.source.items[i]
        text = read_document(self.source.files[file], int(offset), self.encoding)[: 400 * self.max_length]
        ids = self.tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        room = self.max_length - len(self.prefix) - len(self.suffix)
        if len(ids) > room:
            start = int(torch.randint(0, len(ids) - room + 1, (), generator=g))
            ids = ids[start : start + room]
        ids = torch.tensor(self.prefix + list(ids) + self.suffix, dtype=torch.long)
        if not self.mlm:
            return ids, torch.full_like(ids, -100)
        return mask_tokens(ids, self.tokenizer, self.special, g, vocab_size=self.vocab_size)


def mask_tokens(ids: torch.Tensor, tokenizer: Any, special: set[int], g: torch.Generator,
                p: float = 0.15, vocab_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: ``p`` of the non-special tokens become targets; of those 80% turn into [MASK], 10% into a random
    token, 10% stay. Returns (input ids, labels with -100 where nothing is predicted)."""
    labels = ids.clone()
    candidates = torch.tensor([int(t) not in special for t in ids.tolist()])
    chosen = (torch.rand(ids.shape, generator=g) < p) & candidates
    if candidates.any() and not chosen.any():  # every window predicts at least one token
        pick = torch.nonzero(candidates).flatten()
        chosen[pick[torch.randint(len(pick), (), generator=g)]] = True
    labels[~chosen] = -100
    roll = torch.rand(ids.shape, generator=g)
    ids = ids.clone()
    ids[chosen & (roll < 0.8)] = tokenizer.mask_token_id
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    ids[swap] = torch.randint(vocab_size or len(tokenizer), ids.shape, generator=g)[swap]
    return ids, labels


def pad_tokens(batch: list[tuple[torch.Tensor, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch of (ids, labels) to its longest row."""
    n = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for k, (x, y) in enumerate(batch):
        ids[k, : len(x)] = x
        labels[k, : len(y)] = y
        mask[k, : len(x)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# ---- the order of examples ----------------------------------------------------------------------------------------

class StepSampler(Sampler[list[int]]):
    """Batches for steps ``start, start+1, ... total-1`` of a run, for one process.

    Each epoch is a permutation drawn from ``(seed, epoch)``; step ``s`` takes the ``s``-th slice of
    ``global_batch`` examples of it and process ``rank`` of ``world`` takes its ``global_batch / world`` share. So
    every process draws the same permutation, the shares never overlap, the global batch of a step is the same
    for one or many processes, and a run resumed at step ``s`` sees what an uninterrupted run would have seen.
    The last incomplete batch of each epoch is dropped. Indices are ``epoch * n + i`` (see :class:`ImageStream`).
    """

    def __init__(self, n: int, global_batch: int, total_steps: int, start: int = 0, rank: int = 0, world: int = 1,
                 seed: int = 0):
        if global_batch % world:
            raise DataError(f"--batch-size {global_batch} does not split evenly over {world} processes: use a "
                            f"multiple of {world}.")
        if n < global_batch:
            raise DataError(f"Only {n} examples for a batch of {global_batch}: lower --batch-size or add data.")
        self.n, self.global_batch, self.total, self.start = n, global_batch, total_steps, start
        self.rank, self.world, self.seed = rank, world, seed
        self.steps_per_epoch = n // global_batch
        self.local = global_batch // world

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        perm, perm_epoch = None, -1
        for step in range(self.start, self.total):
            epoch, k = divmod(step, self.steps_per_epoch)
            if epoch != perm_epoch:
                g = torch.Generator().manual_seed(example_seed(self.seed, epoch, -1))
                perm, perm_epoch = torch.randperm(self.n, generator=g), epoch
            lo = k * self.global_batch + self.rank * self.local
            yield (perm[lo : lo + self.local] + epoch * self.n).tolist()
