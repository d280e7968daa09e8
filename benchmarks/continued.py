"""Further fine-tuning from a bundle, and what it forgets: Fashion-MNIST classes 0-4, then 5-9 with 10 labels each.

Bundle A: EfficientNet-Lite0 (pretrained, 224 px) fine-tuned on classes 0-4 (T-shirt/top, Trouser, Pullover, Dress,
Coat), 100 training images each, ``--strategy finetune --epochs 4``. Then ``fit NEW --init-from A`` on classes 5-9
(Sandal, Shirt, Sneaker, Bag, Ankle boot) with 10 training images each, in several ways:

- ``finetune``: the whole network from A's weights, A's head grown by five rows; no replay, no L2-SP;
- ``finetune + L2-SP``: the same, the weights pulled toward A's (``--l2sp``);
- ``finetune + replay``: 10% of A's training images (10 per old class) mixed into training;
- ``finetune + replay + L2-SP``;
- ``linear``: A's backbone frozen, the probe fitted on the new classes, A's rows kept for the old ones;
- ``linear + replay``.

Each is scored on 500 test images of the old classes (``--old-test``: A before, the new model after) and 500 of the
new ones (the run's test split), and on all 1,000 together. Fine-tuning runs ``--epochs 8`` (the epoch count chosen
by cross-validation within that, as ``fit`` does on small data).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/continued.py        # about 20 minutes on 2 CPU cores

Prints a Markdown table and saves benchmarks/results/continued.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
DATA = ROOT / "data" / "bench" / "fmnist-continued"
RUNS = ROOT / "runs" / "bench-continued"

VARIANTS = {  # name -> fit() arguments beside init_from
    "finetune": {"strategy": "finetune", "epochs": 8},
    "finetune + L2-SP": {"strategy": "finetune", "epochs": 8, "l2sp": 1.0},
    "finetune + replay": {"strategy": "finetune", "epochs": 8, "replay": "old"},
    "finetune + replay + L2-SP": {"strategy": "finetune", "epochs": 8, "replay": "old", "l2sp": 1.0},
    "linear": {"strategy": "linear"},
    "linear + replay": {"strategy": "linear", "replay": "old"},
}


def folders() -> dict[str, Path]:
    """old/ (classes 0-4: 100 training images each, 100 test each), new/ (classes 5-9: 10 training each, 100 test
    each) and all-test/ (the 1,000 test images), from one Fashion-MNIST export."""
    from transferkit.datasets.fashion_mnist import CLASSES, export_image_folder

    source = DATA / "source"
    if not (source / "train").is_dir():
        export_image_folder(source, train_per_class=100, test_size=1000)
    out = {"old": DATA / "old", "new": DATA / "new", "all": DATA / "all-test"}
    if not (out["all"] / CLASSES[-1]).is_dir():
        for f in out.values():
            shutil.rmtree(f, ignore_errors=True)
        for i, c in enumerate(CLASSES):
            part = "old" if i < 5 else "new"
            train = sorted((source / "train" / c).glob("*.png"))
            for f in train if part == "old" else train[:10]:
                (out[part] / "train" / c).mkdir(parents=True, exist_ok=True)
                shutil.copy(f, out[part] / "train" / c / f.name)
            for f in sorted((source / "test" / c).glob("*.png")):
                for dest in (out[part] / "test" / c, out["all"] / c):
                    dest.mkdir(parents=True, exist_ok=True)
                    shutil.copy(f, dest / f.name)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS), default=None)
    args = parser.parse_args()
    import torch

    import transferkit

    torch.set_num_threads(2)
    data = folders()
    bundle_a = RUNS / "A" / "model"
    if not (bundle_a / "config.json").is_file():
        t = time.monotonic()
        transferkit.fit(str(data["old"]), strategy="finetune", epochs=4, out=RUNS / "A")
        print(f"bundle A: {time.monotonic() - t:.0f} s")
    a = transferkit.load(bundle_a)
    a_old = a.evaluate(str(data["old"] / "test"))["accuracy"]
    rows = [{"variant": "A (before)", "old": a_old, "new": None, "all": None, "seconds": None}]
    for name, kwargs in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        kwargs = dict(kwargs)
        if kwargs.get("replay") == "old":
            kwargs |= {"replay": str(data["old"]), "replay_fraction": 0.1}
        t = time.monotonic()
        run = RUNS / name.replace(" + ", "-").replace(" ", "")
        model = transferkit.fit(str(data["new"]), init_from=bundle_a, old_test=str(data["old"] / "test"), out=run,
                                **kwargs)
        seconds = time.monotonic() - t
        c = model.metrics["continued"]
        everything = model.evaluate(str(data["all"]))
        rows.append({"variant": name, "old": c["forgetting"]["after"]["accuracy"],
                     "new": model.metrics["test"]["accuracy"], "all": everything["accuracy"],
                     "forgotten": c["forgetting"]["forgotten"], "replayed": (c["replay"] or {}).get("examples", 0),
                     "strategy": model.metrics["strategy"], "seconds": round(seconds, 1)})
        print(json.dumps(rows[-1]))
    print("\n| continued with | old classes (500) | new classes (500) | all 10 (1,000) | forgotten | time |")
    print("|---|---|---|---|---|---|")
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    for r in rows:
        took = "-" if r["seconds"] is None else f"{r['seconds']:.0f} s"
        print(f"| {r['variant']} | {f(r['old'])} | {f(r['new'])} | {f(r['all'])} | {f(r.get('forgotten'))} | {took} |")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "continued.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
