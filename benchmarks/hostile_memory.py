"""Peak memory of ``transferkit predict`` on hostile images, against the same command on one ordinary image.

Fits a linear probe on the default offline backbone (EfficientNet-Lite0, 224 px) on a few coloured patches, then
runs ``predict`` in a fresh process for each case and prints its peak resident memory (ru_maxrss) and exit code:
an ordinary 224x224 photo; a 30000x30000 1-bit PNG bomb (110 kB on disk, 2.7 GB decoded); a 12000x1 PNG (93 bytes,
4.2 GB in ``predict`` before its shape was checked); both with ``--skip-bad`` beside the ordinary image.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/hostile_memory.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

from transferkit.datasets.hostile import bomb_png, long_png

MEASURED = """import json, resource, subprocess, sys
r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"rc": r.returncode, "err": r.stderr.strip().splitlines()[-1:] if r.stderr.strip() else [],
                  "peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))"""


def measured(*args: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFERKIT_QUIET": "1"}
    done = subprocess.run([sys.executable, "-c", MEASURED, sys.executable, "-m", "transferkit", *args],
                          capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout)


def main() -> None:
    import transferkit

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, colour in (("red", (200, 30, 30)), ("green", (30, 200, 30)), ("blue", (30, 30, 200))):
            (root / "data" / name).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (224, 224), tuple(min(255, c + 10 * i) for c in colour)).save(
                    root / "data" / name / f"{i}.png")
        transferkit.fit(root / "data", strategy="linear", out=root / "run")
        bundle, good = str(root / "run" / "model"), str(root / "data" / "red" / "0.png")
        bomb, long = str(bomb_png(root / "bomb.png")), long_png(root / "long.png")
        cases = {
            "ordinary 224x224 image": [good],
            "30000x30000 PNG bomb": [bomb],
            "12000x1 PNG": [str(long)],
            "bomb + 12000x1 + ordinary, --skip-bad": [bomb, str(long), good, "--skip-bad"],
        }
        base = None
        print(f"{'case':42s} {'rc':>3s} {'peak MB':>8s} {'vs ordinary':>12s}  last line")
        for name, args in cases.items():
            r = measured("predict", bundle, *args, "--json")
            base = base or r["peak_mb"]
            print(f"{name:42s} {r['rc']:3d} {r['peak_mb']:8.0f} {r['peak_mb'] / base:11.2f}x  "
                  f"{(r['err'] or [''])[0][:90]}")


if __name__ == "__main__":
    main()
