"""Peak memory and time against data size: a linear probe and a fine-tuning epoch, decoded images in memory against
the pixel cache's file store.

For each size (Fashion-MNIST training images, written once as PNGs under ``$TRANSFERKIT_CACHE/fashion-mnist-png``)
and each part, every case runs in a fresh process with a fresh cache folder (so it decodes, cold) and reports its
peak resident memory (``ru_maxrss`` of that process alone) and wall time:

- ``probe``: decode the training images, features of the default backbone (EfficientNet-Lite0) at 112 px, a
  logistic-regression probe on them;
- ``epoch``: decode, then one fine-tuning epoch (random-resized-crop and flip, batch 32, AdamW) of backbone + head.
  With ``--epoch-steps N`` only the first N steps run and the epoch's time is extrapolated from them (marked ``~``).

``memory`` forces every split into one uint8 tensor (``store="memory"``), ``disk`` reads rows from the cache file
(``store="disk"``). Seconds include the decode; ``s/1k`` is seconds per 1,000 images.

``audio`` (``--parts audio``; sizes count recordings of 10 s, written once as 16 kHz WAVs): read every recording,
cut 1 s windows every 0.5 s (19 a recording) and compute the log-mel spectrogram of every window through the
training dataset and a DataLoader (batch 32), as an epoch's input pipeline does; ``memory`` holds the samples in one
float16 tensor, ``disk`` reads windows from the audio cache's entry.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/memory_scaling.py --sizes 1000,10000,60000
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/memory_scaling.py --sizes 1000,3000 --epoch-steps 20
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/memory_scaling.py --parts audio --sizes 100,400,1600
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMAGE_SIZE = 112
BATCH = 32

MEASURED = """import json, resource, subprocess, sys
r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
out = r.stdout.strip().splitlines()
print(json.dumps({"rc": r.returncode, "err": r.stderr.strip().splitlines()[-3:], "case": json.loads(out[-1]) if out
                  and r.returncode == 0 else None,
                  "peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))"""


def png_folder(size: int) -> Path:
    """The first ``size`` Fashion-MNIST training images as ``<class>/<index>.png``: hard links into one folder of
    PNGs, each written once (so the 60,000 are written by the first run that asks for them, and reused)."""
    from PIL import Image

    from transferkit.cache import cache_root
    from transferkit.console import track
    from transferkit.datasets.fashion_mnist import CLASSES, load_fashion_mnist

    root = cache_root() / "fashion-mnist-png"
    images, labels = load_fashion_mnist("train")
    size = min(size, len(images))
    folder = root / f"first-{size}"
    if (folder / ".done").is_file():
        return folder
    for i in track(range(size), f"writing {size} Fashion-MNIST PNGs (once)"):
        name = f"{CLASSES[labels[i]]}/{i:05d}.png"
        source, dest = root / "all" / name, folder / name
        if not source.is_file():
            source.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(source)
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.link(source, dest)
    (folder / ".done").write_text("ok")
    return folder


def wav_folder(size: int) -> Path:
    """``size`` recordings of 10 s (a tone, its pitch by class, in noise) as 16 kHz WAVs, written once."""
    import numpy as np
    import soundfile as sf

    from transferkit.cache import cache_root
    from transferkit.console import track

    folder = cache_root() / "bench-audio" / f"first-{size}"
    if (folder / ".done").is_file():
        return folder
    rng = np.random.default_rng(0)
    t = np.arange(160_000) / 16_000
    for i in track(range(size), f"writing {size} recordings of 10 s (once)"):
        label = f"c{i % 4}"
        (folder / label).mkdir(parents=True, exist_ok=True)
        x = 0.3 * np.sin(2 * np.pi * (200 + 150 * (i % 4)) * t) + 0.05 * rng.standard_normal(len(t))
        sf.write(str(folder / label / f"{i:05d}.wav"), x.astype(np.float32), 16_000, subtype="PCM_16")
    (folder / ".done").touch()
    return folder


def run_audio_case(store: str, folder: Path) -> dict:
    """Read the recordings, cut windows, log-mel of every window through the training dataset; returns timings."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from transferkit.backbones.audio import AudioPreprocessConfig, MelSpectrogram
    from transferkit.data.audio import read_clips, window_clips
    from transferkit.tasks.audio import AudioWindowDataset

    pre = AudioPreprocessConfig(clip_seconds=1.0)
    items = sorted(folder.rglob("*.wav"))
    t0 = time.perf_counter()
    clips = read_clips(items, pre, store=store)
    data = window_clips(clips, [int(p.parent.name[1:]) for p in items], pre.clip_samples)
    decode_s = time.perf_counter() - t0
    mel, total = MelSpectrogram(pre), 0.0
    with torch.no_grad():
        for x, _ in DataLoader(AudioWindowDataset(data), batch_size=BATCH, shuffle=True):
            total += float(mel(x).mean())
    entries = list((Path(os.environ["TRANSFERKIT_CACHE"]) / "audio").glob("*.rows"))
    return {"images": len(items), "seconds": time.perf_counter() - t0, "decode_s": decode_s,
            "note": f"{len(data.waves)} windows", "cache_mb": sum(p.stat().st_size for p in entries) / 2**20,
            "store": "disk" if data.waves.on_disk else "memory", "check": float(np.float64(total))}


def run_case(part: str, store: str, folder: Path, epoch_steps: int | None) -> dict:
    """One case, in this process: decode, then the probe or the epoch; returns its timings."""
    import numpy as np
    import torch

    if part == "audio":
        return run_audio_case(store, folder)

    from transferkit.backbones.registry import create_backbone
    from transferkit.data.images import decode
    from transferkit.data.sources import ImageSet
    from transferkit.datasets.fashion_mnist import CLASSES
    from transferkit.tasks.base import replace_preprocess

    torch.manual_seed(0)
    bb = create_backbone(None, modality="image")
    replace_preprocess(bb, input_size=(IMAGE_SIZE, IMAGE_SIZE))
    items = sorted(folder.rglob("*.png"))
    t0 = time.perf_counter()
    data = decode(ImageSet(items, [p.parent.name for p in items]), bb.preprocess, CLASSES, store=store)
    decode_s = time.perf_counter() - t0
    note = ""
    if part == "probe":
        from sklearn.linear_model import LogisticRegression

        from transferkit.engine.inference import forward_inputs

        feats = forward_inputs(bb, data, bb.preprocess, batch_size=64, description="features")
        LogisticRegression(max_iter=200).fit(feats.numpy(), data.targets.numpy())
    else:
        from torch.utils.data import DataLoader

        from transferkit.data.images import image_prepare
        from transferkit.tasks.image import ImageTensorDataset

        model = torch.nn.Sequential(bb, torch.nn.Linear(bb.num_features, len(CLASSES))).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        prepare = image_prepare(bb.preprocess)
        loader = DataLoader(ImageTensorDataset(data, augment=True), batch_size=BATCH, shuffle=True)
        steps = len(loader) if not epoch_steps else min(epoch_steps, len(loader))
        t = time.perf_counter()
        for step, (x, y) in enumerate(loader):
            if step == steps:
                break
            loss = torch.nn.functional.cross_entropy(model(prepare(x)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if steps < len(loader):  # the epoch's time from its first steps
            note = f"~ {steps} of {len(loader)} steps"
            t0 -= (time.perf_counter() - t) * (len(loader) / steps - 1)
    seconds = time.perf_counter() - t0
    pixels = list((Path(os.environ["TRANSFERKIT_CACHE"]) / "pixels").glob("*.rows"))
    return {"images": len(data), "seconds": seconds, "decode_s": decode_s, "note": note,
            "cache_mb": sum(p.stat().st_size for p in pixels) / 2**20, "store": type(data.pixels).__name__,
            "check": float(np.float64(data.pixels[len(data) - 1].float().mean()))}


def measured(part: str, store: str, folder: Path, epoch_steps: int | None) -> dict:
    """:func:`run_case` in a fresh process (its own cache folder), with that process's peak resident memory."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFERKIT_QUIET": "1", "TRANSFERKIT_CACHE": cache}
        args = [sys.executable, __file__, "--case", part, store, str(folder), str(epoch_steps or 0)]
        done = subprocess.run([sys.executable, "-c", MEASURED, *args], capture_output=True, text=True, env=env,
                              check=True)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,60000", help="training images per case, e.g. 1000,10000")
    parser.add_argument("--parts", default="probe,epoch", help="probe, epoch, audio, or several: probe,epoch")
    parser.add_argument("--stores", default="memory,disk", help="memory, disk or both")
    parser.add_argument("--epoch-steps", type=int, default=None,
                        help="time only the first N steps of the epoch and extrapolate (marked ~)")
    parser.add_argument("--case", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        part, store, folder, steps = args.case
        print(json.dumps(run_case(part, store, Path(folder), int(steps) or None)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{'part':6s} {'store':7s} {'items':>7s} {'cache MB':>9s} {'peak MB':>8s} {'seconds':>8s} "
          f"{'decode s':>8s} {'s/1k':>7s}  note")
    for size in sizes:
        for part in args.parts.split(","):
            folder = wav_folder(size) if part == "audio" else png_folder(size)
            for store in args.stores.split(","):
                r = measured(part, store, folder, args.epoch_steps)
                c = r["case"]
                if c is None:
                    print(f"{part:6s} {store:7s} {size:7d} failed (rc {r['rc']}): {' / '.join(r['err'])[:200]}")
                    continue
                print(f"{part:6s} {store:7s} {c['images']:7d} {c['cache_mb']:9.1f} {r['peak_mb']:8.0f} "
                      f"{c['seconds']:8.1f} {c['decode_s']:8.1f} {c['seconds'] / c['images'] * 1000:7.2f}  {c['note']}",
                      flush=True)


if __name__ == "__main__":
    main()
