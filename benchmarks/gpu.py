"""The GPU path, measured (issue 19): EfficientNet-Lite0 fine-tuning on a card, transferkit next to the plain timm
loop, with and without ``torch.compile``.

What transferkit does on CUDA: pinned loader memory and non-blocking host-to-device copies (Accelerate's
``DataLoaderConfiguration(non_blocking=True)``), loader workers (``min(8, cpus - 1)``), bf16 autocast, fused AdamW,
channels_last, and with ``--compile`` ``torch.compile`` of the trained network. The plain loop is the timm model
with channels_last and bf16 autocast and ``torch.optim.AdamW``, on the same uint8 batches normalised; ``compiled``
rows compile both. Parts (images/s, best of ``--repeats`` after a warm-up):

- ``features``: ``extract_features`` (no cache) against the plain model in eval mode;
- ``step``: fine-tuning steps on batches already in host memory (as decoded data are);
- ``step, compiled``: the same with ``torch.compile`` on both sides; its note says what compiling cost (the
  warm-up run's extra seconds);
- ``epoch``: ``FinetuneStrategy.fit`` for one epoch (its loaders with workers and pinned memory, the engine's loop)
  against a plain ``DataLoader`` loop.

For reference, one H100 fine-tunes EfficientNet-Lite0 at about 5,300 images/s (channels_last + bf16) and 7,000 with
torch.compile. Untested on a GPU so far: no card was available when it was written. On a machine without one it
runs on the CPU at whatever size it is given (the CI smoke test runs it at a tiny size):

    .venv/bin/python benchmarks/gpu.py                                     # on a GPU: batch 256, 50 batches
    .venv/bin/python benchmarks/gpu.py --batch-size 4 --batches 2 --image-backbone BACKBONE_FOLDER   # smoke

Prints a Markdown table and saves benchmarks/results/gpu.json (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TRANSFERKIT_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

sys.path.insert(0, str(Path(__file__).parent))
import throughput as tp  # noqa: E402  (the shared timing and the loops on both sides)

HERE = Path(__file__).parent


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    ap.add_argument("--batch-size", type=int, default=256 if cuda else 32)
    ap.add_argument("--batches", type=int, default=50 if cuda else 4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parts", default="features,step,compiled,epoch", help="comma-separated")
    ap.add_argument("--workers", default="", help="epoch: loader workers to compare, e.g. 0,4,8 (default: "
                                                  "transferkit's choice for the device)")
    ap.add_argument("--image-backbone", default="efficientnet_lite0")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gpu.json")
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))

    from torch.utils.data import TensorDataset

    from transferkit.backbones.registry import create_backbone
    from transferkit.data.images import DecodedImages, normalize
    from transferkit.engine.accel import default_workers, make_accelerator, resolve_precision
    from transferkit.strategies import TrainTask
    from transferkit.tasks import get_task

    acc = make_accelerator("auto")
    device = acc.device
    bb = create_backbone(args.image_backbone)
    pre = bb.preprocess
    n, bs = args.batches * args.batch_size, args.batch_size
    tp.BATCH["image"] = bs
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (max(n, 8 * bs), 3, *pre.input_size), dtype=torch.uint8, generator=g)
    targets = torch.arange(len(pixels)) % 10
    data = DecodedImages(pixels, targets, [str(i) for i in range(len(pixels))], [])
    task = get_task("image")
    tt = TrainTask(spec=bb.spec, backbone=bb, train=data, val=None, classes=[str(c) for c in range(10)],
                   accelerator=acc, workers=default_workers(device), batches=task)
    autocast = tp.autocast_plain()

    def inputs(x):
        return normalize(x.to(device, non_blocking=True), pre).contiguous(memory_format=torch.channels_last)

    def timm_model(classes: int = 0, compiled: bool = False):
        m = copy.deepcopy(bb.body)  # the timm module itself (efficientnet_lite0: tf_efficientnet_lite0)
        m.reset_classifier(classes)
        m = m.to(memory_format=torch.channels_last)
        return torch.compile(m) if compiled else m

    machine = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
               "precision": resolve_precision("auto"), "workers": tt.workers, "batch": bs}
    print(machine, flush=True)
    rows = []
    if "features" in parts:
        plain = timm_model().to(device).eval()

        @torch.no_grad()
        def plain_features() -> int:
            for s in range(0, n, 64):
                with autocast():
                    plain(inputs(pixels[s : s + 64])).float().cpu()
            return n

        sub = DecodedImages(pixels[:n], targets[:n], data.fingerprints[:n], [])
        rows.append(tp.compare("image", "features", tp.tk_features(tt, sub, acc), plain_features, args.repeats,
                               "images"))
    batches = [(pixels[s : s + bs], targets[s : s + bs]) for s in range(0, n, bs)]
    if "step" in parts:
        rows.append(tp.compare("image", "step", tp.tk_steps(tt, acc, batches),
                               tp.plain_steps(timm_model(10), batches, inputs, device), args.repeats, "images"))
    if "compiled" in parts:
        row = tp.compare("image", "step, compiled", tp.tk_steps(tt, acc, batches, compiled=True),
                         tp.plain_steps(timm_model(10, compiled=True), batches, inputs, device), args.repeats, "images")
        row["note"] = (f"compiling cost {row['warm_up_s']['transferkit']:.0f} s (transferkit), "
                       f"{row['warm_up_s']['plain']:.0f} s (plain)")
        rows.append(row)
    if "epoch" in parts:
        n_rows, loader_bs = tp.epoch_rows(tt)
        plain = tp.plain_epoch(lambda: timm_model(10), TensorDataset(pixels, targets), n_rows, loader_bs, inputs,
                               device)
        for w in [int(w) for w in args.workers.split(",") if w.strip()] or [tt.workers]:
            rows.append(tp.compare("image", "epoch", tp.tk_epoch(task, dataclasses.replace(tt, workers=w), n_rows),
                                   plain, args.repeats, "images", note=f"{w} loader workers, pinned: {cuda}"))
    print("\n| part | transferkit | plain timm loop | ratio | note |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['part']} | {r['transferkit']:.0f} images/s | {r['plain']:.0f} | {r['ratio']:.2f} | {r['note']} |")
    results = {"machine": machine, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nsaved {args.out}")
    return results


if __name__ == "__main__":
    main()
