"""What an ONNX export buys on this CPU: latency at batch 1 and throughput at batch 32, PyTorch eager against
onnxruntime fp32 and INT8, with each one's test accuracy beside it.

Three real models: EfficientNet-Lite0 (the default image backbone, 224 px) probed on Fashion-MNIST (100 training
images a class, 1,000 test images), all-MiniLM-L6-v2 (the default text backbone) probed on BBC News (32 texts a
class, 100 test texts a class), and EfficientNet-Lite0 on log-mel spectrograms probed on spoken digits (20 clips a
digit from 20 espeak-ng voices, 300 test clips from 10 others; needs espeak-ng, which ``make data`` installs);
``transferkit fit --strategy linear`` trains each, ``transferkit export`` writes fp32 and INT8 (static, calibrated on
the training inputs, for the CNNs; dynamic for MiniLM) after its parity check (INT8 with ``--max-drop 1``, so that a
model export would refuse is still written, timed and scored). An audio input is a recording: all its windows, their
logits averaged (in the graph for ONNX); a batch of 32 recordings is one run over all their windows.
Every engine then runs the same decoded (tokenised) test inputs in this process: PyTorch eager in fp32 (what
``predict`` runs on a CPU without native bf16, like this one) and, where the CPU computes bf16, with bf16 autocast
(``predict``'s default there); onnxruntime with its default threads. Latency is the median over single inputs;
throughput the best of 3 passes over batches of 32.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/export.py            # about 10 minutes on 2 CPU cores
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/export.py --only text     # or image, audio: the others' rows kept

Prints a Markdown table and saves benchmarks/results/export.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent
ROOT = HERE.parent
DATA = ROOT / "data" / "bench"
RUNS = ROOT / "runs" / "bench-export"
BIN = Path(sys.executable).parent / "transferkit"


def dataset(kind: str) -> Path:
    if kind == "audio":
        from transferkit.datasets.spoken_digits import build_spoken_digits

        folder = DATA / "digits-export-20"
        if not (folder / "train").is_dir():
            build_spoken_digits(folder, train_per_class=20, test_per_class=30, train_speakers=20, test_speakers=10,
                                seed=0)
        return folder
    if kind == "image":
        from transferkit.datasets.fashion_mnist import export_image_folder

        folder = DATA / "fmnist-100"
        if not (folder / "train").is_dir():
            export_image_folder(folder, train_per_class=100, test_size=1000)
    else:
        from transferkit.datasets.bbc_news import export_text_folder

        folder = DATA / "bbc-32"
        if not (folder / "train").is_dir():
            export_text_folder(folder, train_per_class=32, test_per_class=100)
    return folder


def fit_and_export(kind: str, folder: Path) -> tuple[Path, dict, dict]:
    run = RUNS / kind
    if not (run / "model" / "config.json").is_file():
        subprocess.run([str(BIN), "fit", str(folder), "--strategy", "linear", "--out", str(run)], check=True)
    metas = {}
    # --max-drop 1: the INT8 model is written whatever it scores, so that it can be timed; its accuracy is reported
    for name, extra in (("fp32", []), ("int8", ["--quantize", "int8", "--max-drop", "1"])):
        out = RUNS / f"{kind}-{name}"
        done = subprocess.run([str(BIN), "export", str(run / "model"), "--out", str(out), "--check",
                               str(folder / "test"), "--json", *extra], check=True, capture_output=True, text=True)
        metas[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return run, metas["fp32"], metas["int8"]


def timings(call, inputs: list, batch: int, repeats: int = 3, singles: int = 40) -> tuple[float, float]:
    """(median ms for one input, best inputs/s over batches of ``batch``)."""
    call(inputs[:1])
    lat = []
    for x in inputs[:singles]:
        t = time.perf_counter()
        call([x])
        lat.append((time.perf_counter() - t) * 1000)
    n = (len(inputs) // batch) * batch
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        for s in range(0, n, batch):
            call(inputs[s : s + batch])
        best = max(best, n / (time.perf_counter() - t))
    return statistics.median(lat), best


def measure(kind: str, only_batches: int) -> list[dict]:
    import onnxruntime as ort

    import transferkit
    from transferkit.engine.inference import text_batch

    folder = dataset(kind)
    run, fp32_meta, int8_meta = fit_and_export(kind, folder)
    model = transferkit.load(run / "model")
    data = model.task.read_labelled(model, str(folder / "test"), False)
    y = data.targets.numpy()
    clf = model.classifier.eval()
    pooled = None
    if kind == "audio":
        ends = np.cumsum(torch.bincount(data.owner, minlength=len(data)).numpy())
        rows = [data.waves[np.arange(e - n, e)].float() for e, n in zip(ends, np.diff(ends, prepend=0), strict=True)]

        def torch_input(batch):
            return torch.cat(batch)

        def averaging(batch):
            out = torch.zeros(len(batch), sum(len(w) for w in batch))
            at = 0
            for r, w in enumerate(batch):
                out[r, at : at + len(w)] = 1.0 / len(w)
                at += len(w)
            return out

        def ort_input(batch):
            return {"waves": torch.cat(batch).numpy(), "averaging": averaging(batch).numpy()}

        def pooled(logits, batch):
            return averaging(batch) @ logits

    elif kind == "image":
        from transferkit.data.images import normalize

        rows = [data.pixels[i : i + 1] for i in range(len(data))]
        pre = model.preprocess

        def torch_input(batch):
            return normalize(torch.cat(batch), pre).contiguous(memory_format=torch.channels_last)

        def ort_input(batch):
            return {"pixels": torch.cat(batch).numpy()}

        clf = clf.to(memory_format=torch.channels_last)
    else:
        rows = [(data.input_ids[i : i + 1], data.attention_mask[i : i + 1]) for i in range(len(data))]

        def joined(batch):
            return text_batch(torch.cat([b[0] for b in batch]), torch.cat([b[1] for b in batch]))

        def torch_input(batch):
            return joined(batch)

        def ort_input(batch):
            return {k: v.numpy() for k, v in joined(batch).items()}

    def eager(bf16: bool):
        @torch.no_grad()
        def call(batch):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = clf(torch_input(batch)).float()
                return torch.softmax(pooled(logits, batch) if pooled else logits, 1).numpy()
        return call

    def onnx(path: Path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def call(batch):
            return session.run(["probabilities"], ort_input(batch))[0]
        return call

    from transferkit.engine.accel import bf16_supported_on_cpu

    engines = {"PyTorch eager fp32": eager(False),
               **({"PyTorch eager bf16 autocast": eager(True)} if bf16_supported_on_cpu() else {}),
               "ONNX Runtime fp32": onnx(RUNS / f"{kind}-fp32" / "model.onnx"),
               "ONNX Runtime INT8": onnx(RUNS / f"{kind}-int8" / "model.onnx")}
    out = []
    for name, call in engines.items():
        probs = np.concatenate([call(rows[s : s + 32]) for s in range(0, len(rows), 32)])
        ms, rate = timings(call, rows, only_batches)
        out.append({"model": TITLES[kind], "engine": name, "accuracy": float((probs.argmax(1) == y).mean()),
                    "test": int(len(y)), "latency_ms": ms, "per_s_batch32": rate,
                    "file_mb": int8_meta["int8"]["file_mb"] if name.endswith("INT8") else
                    int8_meta["int8"]["fp32_file_mb"] if name.startswith("ONNX") else None,
                    "parity": fp32_meta["parity"]["max_abs_diff"] if name == "ONNX Runtime fp32" else None})
        print(json.dumps(out[-1]), flush=True)
    return out


TITLES = {"image": "EfficientNet-Lite0 on Fashion-MNIST", "text": "all-MiniLM-L6-v2 on BBC News",
          "audio": "EfficientNet-Lite0 on spoken digits (spectrograms)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=list(TITLES), default=None)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(2)
    saved = HERE / "results" / "export.json"
    previous = json.loads(saved.read_text()) if saved.is_file() and args.only else []
    rows = []
    for kind in TITLES:
        if args.only in (None, kind):
            rows += measure(kind, args.batch)
        else:  # --only: the other models' rows as the last full run measured them
            rows += [r for r in previous if r["model"] == TITLES[kind]]
    print("\n| model | engine | test accuracy | latency, batch 1 | throughput, batch 32 | model file |")
    print("|---|---|---|---|---|---|")
    base = {}
    for r in rows:
        base.setdefault(r["model"], r["per_s_batch32"])
        size = f"{r['file_mb']:.1f} MB" if r["file_mb"] else ""
        print(f"| {r['model']} | {r['engine']} | {r['accuracy']:.3f} (n={r['test']}) | {r['latency_ms']:.1f} ms | "
              f"{r['per_s_batch32']:.1f}/s ({r['per_s_batch32'] / base[r['model']]:.2f}x) | {size} |")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "export.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
