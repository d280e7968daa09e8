"""Fashion-MNIST transfer benchmark: the numbers in the foundation issue's closing note.

For 10 and 100 labelled images per class (from the official training set; 15% of them become the validation
set), every strategy is scored on 1,000 images of the official test set (100 per class), with wall time.
Then feature-extraction and fine-tuning throughput of transferkit next to a plain PyTorch loop.

    .venv/bin/python benchmarks/fashion_mnist.py                 # everything (about an hour on 2 CPU cores)
    .venv/bin/python benchmarks/fashion_mnist.py --per-class 10  # the small budget only
    .venv/bin/python benchmarks/fashion_mnist.py --per-class 100 --budget-all 10m   # equal time for each strategy
    .venv/bin/python benchmarks/fashion_mnist.py --throughput-only

Results are printed as a Markdown table and saved to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TRANSFERKIT_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import transferkit  # noqa: E402
from transferkit.datasets.fashion_mnist import export_image_folder  # noqa: E402

HERE = Path(__file__).parent
STRATEGIES = ["linear", "finetune", "gradual", "scratch", "auto"]


def run_strategies(per_class: int, strategies: list[str], budget: str, work: Path, seed: int,
                   budget_all: str | None = None) -> list[dict]:
    data = work / f"fm-{per_class}"
    if not (data / "train").is_dir():
        export_image_folder(data, train_per_class=per_class, test_size=1000, seed=seed)
    rows = []
    for s in strategies:
        t = time.monotonic()
        model = transferkit.fit(data, strategy=s, out=work / f"run-{per_class}-{s}", seed=seed,
                                budget=budget_all or (budget if s == "auto" else None))
        m = model.metrics
        rows.append({
            "per_class": per_class, "strategy": m["strategy"], "test_accuracy": m["test"]["accuracy"],
            "test_macro_f1": m["test"]["macro_f1"], "wall_s": time.monotonic() - t,
            "train_s": m["timings"].get("train_s", 0.0), "epochs": len(m["history"]["epochs"]),
            "trainable_params": m["trainable_params"], "gap_acc": m["train_val_gap"]["accuracy"],
            "budget": budget_all or (budget if s == "auto" else None), "stopped": m["history"]["stopped"],
        })
        r = rows[-1]
        print(f"  {per_class:>3}/class {r['strategy']:<18} acc {r['test_accuracy']:.3f}  F1 {r['test_macro_f1']:.3f}  "
              f"{r['wall_s']:7.1f}s  epochs {r['epochs']}", flush=True)
    return rows


def throughput(n: int = 256, batch: int = 32) -> dict:
    """images/s: transferkit's paths vs a plain PyTorch loop (fp32, NCHW, what most scripts do)."""
    import timm

    from transferkit.backbones import create_backbone
    from transferkit.data.images import DecodedImages, normalize
    from transferkit.engine.accel import make_accelerator
    from transferkit.engine.features import extract_features
    from transferkit.data.images import image_prepare

    torch.manual_seed(0)
    pixels = torch.randint(0, 256, (n, 3, 224, 224), dtype=torch.uint8)
    data = DecodedImages(pixels, torch.zeros(n, dtype=torch.long), [str(i) for i in range(n)], [])
    bb = create_backbone("efficientnet_lite0")
    out = {}

    def timed(fn) -> float:
        fn(min(n, 2 * batch))  # warm-up
        t = time.perf_counter()
        fn(n)
        return n / (time.perf_counter() - t)

    # feature extraction
    acc = make_accelerator("auto")
    out["features_transferkit"] = timed(lambda k: extract_features(
        bb, DecodedImages(pixels[:k], data.targets[:k], data.fingerprints[:k], []), acc, cache=False))
    plain = timm.create_model("tf_efficientnet_lite0", num_classes=0).eval()
    plain.load_state_dict(bb.body.state_dict())

    @torch.no_grad()
    def plain_features(k: int) -> None:
        for s in range(0, k, 64):
            plain(normalize(pixels[s : s + 64], bb.preprocess))

    out["features_plain_fp32"] = timed(plain_features)

    # fine-tuning steps (forward, backward, AdamW)
    def train_steps(model, prepare, autocast: bool):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        model.train()

        def run(k: int) -> None:
            for s in range(0, k, batch):
                x = prepare(pixels[s : s + batch])
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    loss = model(x).float().logsumexp(1).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()

        return run

    from transferkit.engine.accel import resolve_precision
    from transferkit.heads import Classifier, LinearHead

    bf16 = resolve_precision("auto") == "bf16"
    ours = Classifier(create_backbone("efficientnet_lite0"), LinearHead(1280, 10)).to(memory_format=torch.channels_last)
    out["finetune_transferkit"] = timed(train_steps(ours, image_prepare(bb.preprocess), bf16))
    base = timm.create_model("tf_efficientnet_lite0", num_classes=10)
    out["finetune_plain_fp32"] = timed(train_steps(base, lambda x: normalize(x, bb.preprocess), False))
    out["precision"] = "bf16" if bf16 else "fp32"
    out["threads"] = torch.get_num_threads()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--strategies", nargs="+", default=STRATEGIES)
    ap.add_argument("--budget", default="5m", help="time budget of the auto strategy")
    ap.add_argument("--budget-all", default=None, help="one time budget for every strategy (equal-time comparison)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("runs/bench"))
    ap.add_argument("--throughput-only", action="store_true")
    ap.add_argument("--no-throughput", action="store_true")
    args = ap.parse_args()

    results: dict = {"machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "python": sys.version.split()[0]}}
    if not args.throughput_only:
        results["strategies"] = []
        for k in args.per_class:
            print(f"Fashion-MNIST, {k} labelled images per class, 1,000 test images:", flush=True)
            results["strategies"] += run_strategies(k, args.strategies, args.budget, args.work, args.seed,
                                                    args.budget_all)
    if not args.no_throughput:
        tp = throughput()
        results["throughput"] = tp
        print(f"feature extraction: transferkit {tp['features_transferkit']:.1f} img/s ({tp['precision']}, "
              f"channels_last), plain PyTorch fp32 {tp['features_plain_fp32']:.1f} img/s")
        print(f"fine-tuning steps:  transferkit {tp['finetune_transferkit']:.1f} img/s, plain PyTorch fp32 "
              f"{tp['finetune_plain_fp32']:.1f} img/s")

    if "strategies" in results:
        print("\n| labels/class | strategy | test accuracy | macro-F1 | wall time (s) | epochs | budget | "
              "trainable params |")
        print("|---|---|---|---|---|---|---|---|")
        for r in results["strategies"]:
            print(f"| {r['per_class']} | {r['strategy']} | {r['test_accuracy']:.3f} | {r['test_macro_f1']:.3f} | "
                  f"{r['wall_s']:.0f} | {r['epochs']} | {r['budget'] or '-'} | {r['trainable_params']:,} |")
    dest = HERE / "results"
    dest.mkdir(exist_ok=True)
    name = "throughput" if args.throughput_only else "fashion_mnist_" + "_".join(map(str, args.per_class))
    if args.strategies != STRATEGIES and not args.throughput_only:
        name += "_" + "_".join(args.strategies)
    (dest / f"{name}.json").write_text(json.dumps(results, indent=2))
    print(f"\nsaved {dest / f'{name}.json'}")


if __name__ == "__main__":
    main()
