"""``transferkit serve`` under load: requests per second from one client, one after another, against 32 concurrent
clients, with batching (the default: 5 ms window, up to 32 inputs) and without it (``--max-batch 1``), and the same
model served from its exported ONNX folder (onnxruntime) instead of the bundle.

The model is the EfficientNet-Lite0 linear probe on Fashion-MNIST that ``benchmarks/export.py`` trains (run that
first, or this trains it); every request carries one 28 x 28 PNG from the test split, as a phone app or a
production line would send one picture at a time. The server is a real ``transferkit serve`` process on loopback,
the clients httpx in this process; both share the 2 CPU cores, as they would on one small machine.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serve.py          # about 2 minutes

Prints a Markdown table and saves benchmarks/results/serve.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).parent
ROOT = HERE.parent
BUNDLE = ROOT / "runs" / "bench-export" / "image" / "model"
EXPORTED = ROOT / "runs" / "bench-export" / "image-fp32"  # benchmarks/export.py writes it
DATA = ROOT / "data" / "bench" / "fmnist-100"
BIN = Path(sys.executable).parent / "transferkit"


def start(model: Path, *args: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(BIN), "serve", str(model), "--port", str(port), *args],
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(url + "/health").status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit("the server did not start")


def one_client(url: str, images: list[bytes], n: int = 100) -> dict:
    latencies = []
    with httpx.Client(timeout=60) as client:
        client.post(url + "/predict", files={"files": ("warm.png", images[0])})
        t0 = time.perf_counter()
        for i in range(n):
            t = time.perf_counter()
            r = client.post(url + "/predict", files={"files": (f"{i}.png", images[i % len(images)])})
            r.raise_for_status()
            latencies.append(time.perf_counter() - t)
        total = time.perf_counter() - t0
    return {"requests": n, "errors": 0, "per_s": n / total, "median_ms": statistics.median(latencies) * 1000}


def many_clients(url: str, images: list[bytes], clients: int = 32, each: int = 20) -> dict:
    latencies, errors = [], [0]

    async def client(k: int, session: httpx.AsyncClient) -> None:
        for j in range(each):
            t = time.perf_counter()
            r = await session.post(url + "/predict", files={"files": (f"{k}-{j}.png",
                                                                      images[(k * each + j) % len(images)])})
            errors[0] += r.status_code != 200
            latencies.append(time.perf_counter() - t)

    async def main() -> float:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(timeout=300, limits=limits) as session:
            t0 = time.perf_counter()
            await asyncio.gather(*(client(k, session) for k in range(clients)))
            return time.perf_counter() - t0

    total = asyncio.run(main())
    n = clients * each
    served = httpx.get(url + "/metadata").json()["served"]
    return {"requests": n, "errors": errors[0], "per_s": n / total, "median_ms": statistics.median(latencies) * 1000,
            "inputs_per_batch": served["requests"] / max(1, served["batches"])}


def main() -> None:
    if not (BUNDLE / "config.json").is_file() or not (EXPORTED / "model.onnx").is_file():
        subprocess.run([sys.executable, str(HERE / "export.py"), "--only", "image"], check=True)
    images = [p.read_bytes() for p in sorted((DATA / "test").rglob("*.png"))[:200]]
    rows = []
    for label, model, args, runs in (
            ("bundle, batching (default)", BUNDLE, (), ("one client", "32 clients")),
            ("bundle, no batching (--max-batch 1)", BUNDLE, ("--max-batch", "1"), ("32 clients",)),
            ("exported ONNX folder, batching (default)", EXPORTED, (), ("one client", "32 clients"))):
        proc, url = start(model, *args)
        try:
            for run in runs:
                r = one_client(url, images) if run == "one client" else many_clients(url, images)
                rows.append({"server": label, "clients": run, **r})
                print(json.dumps(rows[-1]), flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    base = rows[0]["per_s"]
    print("\n| server | clients | requests | errors | requests/s | median latency |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['server']} | {r['clients']} | {r['requests']} | {r['errors']} | {r['per_s']:.1f} "
              f"({r['per_s'] / base:.1f}x) | {r['median_ms']:.0f} ms |")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "serve.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
