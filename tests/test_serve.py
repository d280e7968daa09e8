"""``transferkit serve`` (issue 20): a real uvicorn process, a real HTTP client (httpx). Answers equal
``predict``'s; every bad request is one 4xx JSON line; concurrent clients are batched; SIGTERM finishes what is in
flight."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import transferkit
from transferkit.errors import TransferkitError

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``transferkit serve`` in its own process, on a free loopback port."""

    def __init__(self, bundle: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "transferkit", "serve", str(bundle), "--port",
                                      str(self.port), *args], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited: {self.proc.stdout.read()}")
            try:
                if httpx.get(self.url + "/health", headers=self.auth(args)).status_code in (200, 401):
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        self.proc.kill()  # no server left behind by a failed start
        raise AssertionError("serve did not answer within 120 s")

    @staticmethod
    def auth(args: tuple[str, ...]) -> dict[str, str]:
        return {"Authorization": f"Bearer {args[args.index('--token') + 1]}"} if "--token" in args else {}

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def png_bytes(rgb: tuple[int, int, int], size: int = 24, mode: str = "RGB") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (size, size), rgb if mode == "RGB" else 0).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def image_bundle(tmp_path_factory, tiny_backbone) -> Path:
    from conftest import write_colour_images

    root = tmp_path_factory.mktemp("serve")
    write_colour_images(root / "data" / "train", 10, seed=1)
    write_colour_images(root / "data" / "test", 4, seed=2)
    transferkit.fit(root / "data", backbone=tiny_backbone, strategy="linear", out=root / "run")
    return root / "run" / "model"


@pytest.fixture(scope="module")
def server(image_bundle):
    s = Server(image_bundle, "--max-body-mb", "1", "--max-items", "8")
    yield s
    s.stop()


def test_answers_equal_predict_and_metadata_describes_the_model(server, image_bundle):
    tests = sorted((image_bundle.parents[1] / "data" / "test").rglob("*.png"))[:6]
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in tests]
    r = httpx.post(server.url + "/predict", files=files, timeout=60)
    assert r.status_code == 200, r.text
    rows = r.json()["predictions"]
    expected = transferkit.load(image_bundle).predict(tests, top_k=3)
    assert [row["input"] for row in rows] == [p.name for p in tests]  # the upload's own name, not a temp path
    for row, exp in zip(rows, expected, strict=True):
        assert row["label"] == exp["label"]
        assert row["probability"] == pytest.approx(exp["probability"], abs=1e-3)
    meta = httpx.get(server.url + "/metadata").json()
    assert meta["task"] == "image-classification" and meta["labels"] == ["blue", "green", "red"]
    assert "accuracy" in meta["metrics"] and meta["model_card"].startswith("#")
    assert httpx.get(server.url + "/docs").status_code == 200
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}


def test_every_bad_request_is_one_4xx_json_line(server, tmp_path):
    url = server.url + "/predict"
    good = png_bytes((200, 0, 0))
    cases = {
        "no files": (httpx.post(url, files={"other": ("a.png", good)}), 400, "No files"),
        "a text file": (httpx.post(url, files={"files": ("notes.txt", b"hello")}), 415, "reads"),
        "JSON to an image model": (httpx.post(url, json={"texts": ["a"]}), 415, "multipart"),
        "too many files": (httpx.post(url, files=[("files", (f"{i}.png", good)) for i in range(9)]), 413, "over 8"),
        "a body over 1 MB": (httpx.post(url, files={"files": ("big.png", os.urandom(2 * 2**20))}), 413, "over 1 MB"),
        "not an image": (httpx.post(url, files={"files": ("broken.png", b"\x89PNG garbage")}), 400, "broken.png"),
        # 9,000 x 9,000 black pixels compress to a few kB: refused from the header, before decoding 81 MB
        "a decompression bomb": (httpx.post(url, files={"files": ("bomb.png", png_bytes((0, 0, 0), 9000, "L"))}),
                                 400, "pixels"),
    }
    for name, (r, status, words) in cases.items():
        assert r.status_code == status, (name, r.text)
        body = r.json()
        assert set(body) == {"error"} and words in body["error"] and "Traceback" not in body["error"], name
        assert "/tmp" not in body["error"] and "transferkit-uploads" not in body["error"], name
        assert "--" not in body["error"], name  # no command-line hints (--skip-bad) for an HTTP client
    r = httpx.post(url, content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400 and "error" in r.json()

    def chunks():  # no Content-Length: the limit is met while the body streams in
        yield b"--x\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n"
        for _ in range(40):
            yield os.urandom(64 * 1024)

    r = httpx.post(url, content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and "over 1 MB" in r.json()["error"]
    # a client's file name can be anything: too long for a file system, a NUL, a path
    for name in ("x" * 400 + ".png", "a\x00b.png", "../../etc/passwd.png"):
        r = httpx.post(url, files={"files": (name, good)})
        answered = r.json()["predictions"][0]["input"]  # httpx sends a NUL as %00
        assert r.status_code == 200 and answered.replace("%00", "\x00") == name.rsplit("/", 1)[-1][:200]
    # the server is still healthy and still right
    assert httpx.post(url, files={"files": ("ok.png", good)}).json()["predictions"][0]["label"] == "red"


def read_response(raw: socket.socket) -> str:
    """One whole HTTP response: headers and body may arrive in separate packets."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < content_length(data):
        chunk = raw.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.decode()


def content_length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_a_stalled_body_is_answered_408_and_the_pixel_limit_can_be_set(image_bundle):
    s = Server(image_bundle, "--read-timeout", "1", "--max-image-pixels", "500")  # 24 x 24 = 576 pixels: over
    try:
        with socket.create_connection(("127.0.0.1", s.port)) as raw:
            raw.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                        b"Content-Type: multipart/form-data; boundary=x\r\n\r\n--x\r\n")  # then nothing
            raw.settimeout(20)
            answer = read_response(raw)
        assert answer.startswith("HTTP/1.1 408") and "stalled for 1 s" in answer
        r = httpx.post(s.url + "/predict", files={"files": ("a.png", png_bytes((0, 0, 200)))})
        assert r.status_code == 400 and "pixels" in r.json()["error"]
    finally:
        s.stop()


def test_concurrent_clients_are_batched_without_errors(server):
    images = [png_bytes(c) for c in ((0, 0, 200), (0, 200, 0), (200, 0, 0))]
    truth = ["blue", "green", "red"]

    async def client(k: int, session: httpx.AsyncClient) -> list[tuple[int, str]]:
        out = []
        for j in range(20):
            i = (k + j) % 3
            r = await session.post(server.url + "/predict", files={"files": (f"{k}-{j}.png", images[i])})
            out.append((r.status_code, r.json()["predictions"][0]["label"] if r.status_code == 200 else r.text))
        return out

    async def main() -> list[tuple[int, str]]:
        async with httpx.AsyncClient(timeout=120) as session:
            results = await asyncio.gather(*(client(k, session) for k in range(32)))
        return [x for r in results for x in r]

    before = httpx.get(server.url + "/metadata").json()["served"]
    answers = asyncio.run(main())
    assert len(answers) == 640 and all(status == 200 for status, _ in answers)
    assert [label for _, label in answers] == [truth[(k + j) % 3] for k in range(32) for j in range(20)]
    after = httpx.get(server.url + "/metadata").json()["served"]
    requests, batches = after["requests"] - before["requests"], after["batches"] - before["batches"]
    assert requests == 640 and batches < requests  # requests that arrived together ran as one batch


def test_sigterm_lets_the_request_in_flight_finish(image_bundle):
    s = Server(image_bundle, "--batch-window-ms", "300")  # the request waits 0.3 s for company: in flight

    async def main() -> httpx.Response:
        async with httpx.AsyncClient(timeout=60) as session:
            pending = asyncio.create_task(session.post(s.url + "/predict",
                                                       files={"files": ("a.png", png_bytes((0, 0, 200)))}))
            await asyncio.sleep(0.1)
            s.proc.send_signal(signal.SIGTERM)
            return await pending

    r = asyncio.run(main())
    assert r.status_code == 200 and r.json()["predictions"][0]["label"] == "blue"
    # uvicorn exits as the signal asked (it re-raises SIGTERM once shut down), with no traceback
    assert s.stop() in (0, -signal.SIGTERM) and "Traceback" not in s.proc.stdout.read()


def test_tokens_ports_and_addresses(image_bundle):
    s = Server(image_bundle, "--token", "s3cret")
    try:
        assert httpx.get(s.url + "/health").status_code == 401
        assert httpx.get(s.url + "/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(s.url + "/health", headers={"Authorization": "Bearer s3cret"}).json() == {"status": "ok"}
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
        busy = subprocess.run([sys.executable, "-m", "transferkit", "serve", str(image_bundle), "--port",
                               str(s.port)], env=env, capture_output=True, text=True, timeout=60)
        assert busy.returncode == 2 and f"Port {s.port} on 127.0.0.1 is in use" in busy.stderr
    finally:
        s.stop()
    env = {k: v for k, v in os.environ.items() if k != "TRANSFERKIT_TOKEN"}
    env["PYTHONPATH"] = str(Path(__file__).parents[1])
    open_to_all = subprocess.run([sys.executable, "-m", "transferkit", "serve", str(image_bundle), "--host",
                                  "0.0.0.0", "--port", str(free_port())], env=env, capture_output=True, text=True,
                                 timeout=60)
    assert open_to_all.returncode == 2 and "needs a bearer token" in open_to_all.stderr
    for args, words in ((["--host", "192.0.2.1", "--token", "t"], "is not an address of this machine"),
                        (["--token", " "], "--token is blank"), (["--batch-window-ms", "inf"], "--batch-window-ms"),
                        (["--max-body-mb", "nan"], "--max-body-mb")):
        done = subprocess.run([sys.executable, "-m", "transferkit", "serve", str(image_bundle), "--port",
                               str(free_port()), *args], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and words in done.stderr and "Traceback" not in done.stderr, args


def test_a_text_model_takes_json(text_folder, tiny_text_backbone, tmp_path):
    transferkit.fit(text_folder, backbone=tiny_text_backbone, strategy="linear", out=tmp_path / "run")
    bundle = tmp_path / "run" / "model"
    s = Server(bundle, "--max-text-chars", "2000")
    try:
        texts = ["the striker scored in the cup final", "shares fell as the bank cut its rate"]
        r = httpx.post(s.url + "/predict", json={"texts": texts}, timeout=60)
        expected = transferkit.load(bundle).predict(texts, top_k=3)
        assert [row["label"] for row in r.json()["predictions"]] == [e["label"] for e in expected]
        bad = {"malformed JSON": httpx.post(s.url + "/predict", content=b"{texts: [", timeout=30),
               "no texts": httpx.post(s.url + "/predict", json={"texts": []}, timeout=30),
               "not strings": httpx.post(s.url + "/predict", json={"texts": [1, 2]}, timeout=30),
               "too long": httpx.post(s.url + "/predict", json={"texts": ["word " * 1000]}, timeout=30),
               "nested too deep": httpx.post(s.url + "/predict", content=b"[" * 200_000, timeout=30),
               "a lone surrogate": httpx.post(s.url + "/predict", content=b'{"texts": ["\\ud800 abc"]}',
                                              headers={"content-type": "application/json"}, timeout=30),
               "a blank text": httpx.post(s.url + "/predict", json={"texts": ["ok", "  "]}, timeout=30)}
        for name, r in bad.items():
            assert r.status_code == 400 and set(r.json()) == {"error"}, name
        assert "over 2,000" in bad["too long"].json()["error"]
        assert "Text #1 is empty" in bad["a blank text"].json()["error"]
        assert "Input #0 is not valid text" in bad["a lone surrogate"].json()["error"]
        r = httpx.post(s.url + "/predict", files={"files": ("a.txt", b"hello")}, timeout=30)
        assert r.status_code == 415 and "takes JSON" in r.json()["error"]
    finally:
        s.stop()


def test_predict_rows_keep_their_order_across_a_batch():
    from transferkit.serving.app import Batcher

    calls = []

    def predict(items):
        calls.append(list(items))
        if "bad" in items:
            raise ValueError("bad input")
        return [{"input": x} for x in items]

    async def main():
        b = Batcher(predict, max_batch=16, window=0.05)
        b.start()
        results = await asyncio.gather(b.submit(["a", "b"]), b.submit(["bad"]), b.submit(["c"]),
                                       return_exceptions=True)
        await b.stop()
        return results

    ok1, err, ok2 = asyncio.run(main())
    assert ok1 == [{"input": "a"}, {"input": "b"}] and ok2 == [{"input": "c"}] and isinstance(err, ValueError)
    assert calls[0] == ["a", "b", "bad", "c"]  # one batch first; then each request alone, to find the bad one
    assert np.array_equal(np.array([len(c) for c in calls]), np.array([4, 2, 1, 1]))


def test_an_exported_folder_is_served_with_onnxruntime(image_bundle, text_folder, tiny_text_backbone, tmp_path):
    exported = tmp_path / "exported"
    transferkit.load(image_bundle).export(exported)
    (exported / "predict.py").write_text("raise SystemExit('the folder code must never run')\n")
    s = Server(exported)
    try:
        tests = sorted((image_bundle.parents[1] / "data" / "test").rglob("*.png"))[:4]
        r = httpx.post(s.url + "/predict", files=[("files", (p.name, p.read_bytes())) for p in tests], timeout=60)
        assert r.status_code == 200, r.text
        expected = transferkit.load(image_bundle).predict(tests, top_k=3)
        for row, exp in zip(r.json()["predictions"], expected, strict=True):
            assert row["label"] == exp["label"] and row["probability"] == pytest.approx(exp["probability"], abs=1e-4)
        meta = httpx.get(s.url + "/metadata").json()
        assert meta["task"] == "image-classification" and meta["labels"] == ["blue", "green", "red"]
        bomb = httpx.post(s.url + "/predict", files={"files": ("bomb.png", png_bytes((0, 0, 0), 9000, "L"))})
        broken = httpx.post(s.url + "/predict", files={"files": ("broken.png", b"\x89PNG garbage")})
        assert bomb.status_code == 400 and "pixels" in bomb.json()["error"] and "--" not in bomb.json()["error"]
        assert broken.status_code == 400 and "broken.png" in broken.json()["error"]
    finally:
        s.stop()
    transferkit.fit(text_folder, backbone=tiny_text_backbone, strategy="linear", out=tmp_path / "text")
    transferkit.load(tmp_path / "text" / "model").export(tmp_path / "text-onnx", check=["a goal", "the bank"])
    s = Server(tmp_path / "text-onnx")
    try:
        texts = ["the striker scored in the cup final", "shares fell as the bank cut its rate"]
        rows = httpx.post(s.url + "/predict", json={"texts": texts}, timeout=60).json()["predictions"]
        expected = transferkit.load(tmp_path / "text" / "model").predict(texts)
        assert [row["label"] for row in rows] == [e["label"] for e in expected]
        r = httpx.post(s.url + "/predict", content=b'{"texts": ["\\ud800 abc"]}', timeout=30)
        assert r.status_code == 400 and "not valid text" in r.json()["error"]
    finally:
        s.stop()


def test_exported_audio_models_and_detectors_are_served(audio_folder, box_folder, tiny_backbone, tmp_path):
    """Every kind of export is served, with the bundle's answers: an audio model (windows counted) and a detector
    (boxes); a damaged recording is one 400."""
    transferkit.fit(audio_folder, backbone=tiny_backbone, strategy="linear", out=tmp_path / "audio")
    audio = transferkit.load(tmp_path / "audio" / "model")
    audio.export(tmp_path / "audio-onnx")
    transferkit.fit(box_folder, backbone=tiny_backbone, strategy="finetune", epochs=1, batch_size=4,
                    out=tmp_path / "det")
    detector = transferkit.load(tmp_path / "det" / "model")
    detector.export(tmp_path / "det-onnx")
    pre = json.loads((tmp_path / "det-onnx" / "preprocessing.json").read_text())
    (tmp_path / "det-onnx" / "preprocessing.json").write_text(json.dumps({**pre, "threshold": 0.05}))
    recordings = sorted((audio_folder / "test").rglob("*.wav"))[:3]
    images = [Path(f) for f in detector.meta["test_files"][:3]]
    s = Server(tmp_path / "audio-onnx")
    try:
        r = httpx.post(s.url + "/predict", files=[("files", (p.name, p.read_bytes())) for p in recordings], timeout=60)
        assert r.status_code == 200, r.text
        for row, exp in zip(r.json()["predictions"], audio.predict(recordings, precision="no"), strict=True):
            assert row["label"] == exp["label"] and row["windows"] == exp["windows"]
            assert row["probability"] == pytest.approx(exp["probability"], abs=1e-4)
        bad = httpx.post(s.url + "/predict", files={"files": ("bad.wav", b"RIFF garbage")}, timeout=60)
        assert bad.status_code == 400 and "bad.wav" in bad.json()["error"]
        assert httpx.get(s.url + "/metadata").json()["task"] == "audio-classification"
    finally:
        s.stop()
    s = Server(tmp_path / "det-onnx")
    try:
        r = httpx.post(s.url + "/predict", files=[("files", (p.name, p.read_bytes())) for p in images], timeout=60)
        assert r.status_code == 200, r.text
        expected = detector.predict(images, score_threshold=0.05, precision="no")
        for row, exp in zip(r.json()["predictions"], expected, strict=True):
            assert len(row["boxes"]) == len(exp["boxes"]) > 0
            key = lambda b: (b["label"], *b["box"])  # noqa: E731 - equal scores may come in either order
            for a, b in zip(sorted(row["boxes"], key=key), sorted(exp["boxes"], key=key), strict=True):
                assert a["label"] == b["label"] and a["score"] == pytest.approx(b["score"], abs=2e-4)
                assert a["box"] == pytest.approx(b["box"], abs=0.11)
    finally:
        s.stop()


def test_a_damaged_export_is_refused_in_one_line(image_bundle, tmp_path):
    from transferkit.export.runtime import ExportedModel

    exported = tmp_path / "exported"
    transferkit.load(image_bundle).export(exported)
    (exported / "labels.json").write_text("{not json")
    with pytest.raises(TransferkitError, match="labels.json is not valid JSON"):
        ExportedModel(exported)
    (exported / "labels.json").write_text('["blue", "green"]')
    with pytest.raises(TransferkitError, match="gives 3 class probabilities per input, but .* names 2 classes"):
        ExportedModel(exported)
    (exported / "labels.json").write_text('["blue", "green", "red"]')
    pre = json.loads((exported / "preprocessing.json").read_text())
    for key, value, words in (("input_size", [100000, 100000], "input_size must be two whole numbers"),
                              ("input_size", "32", "input_size must be"), ("crop_pct", 0, "crop_pct must be"),
                              ("interpolation", "evil", "interpolation must be one of"),
                              ("multi_label", "yes", "multi_label must be true or false"),
                              ("threshold", 2.0, "threshold must be a number from 0 to 1"),
                              ("resize", None, "resize is missing")):
        bad = {**pre, key: value} if value is not None else {k: v for k, v in pre.items() if k != key}
        (exported / "preprocessing.json").write_text(json.dumps(bad))
        with pytest.raises(TransferkitError, match=words):
            ExportedModel(exported)
    (exported / "preprocessing.json").write_text(json.dumps(pre))
    (exported / "labels.json").write_text('["blue", "blue", "red"]')
    with pytest.raises(TransferkitError, match="names a class twice"):
        ExportedModel(exported)
    (exported / "labels.json").write_text('["blue", "green", "red"]')
    (exported / "model.onnx").write_bytes(b"")
    with pytest.raises(TransferkitError, match="model.onnx is not"):
        ExportedModel(exported)
    (exported / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(TransferkitError, match="not a readable ONNX model"):
        ExportedModel(exported)


def test_a_medical_model_takes_dicom_uploads(dicom_manifest, tiny_backbone, tmp_path):
    """A model trained on DICOM answers a DICOM upload as its predict does (the medical task reads it: window, slope
    and intercept from the header); an image model still refuses one (415)."""
    transferkit.fit(dicom_manifest, backbone=tiny_backbone, strategy="linear", out=tmp_path / "run", explain=False)
    bundle = tmp_path / "run" / "model"
    scan = next((dicom_manifest.parent / "scans").glob("*.dcm"))
    s = Server(bundle)
    try:
        r = httpx.post(s.url + "/predict", files=[("files", (scan.name, scan.read_bytes()))], timeout=60)
        assert r.status_code == 200, r.text
        expected = transferkit.load(bundle).predict([scan])[0]
        assert r.json()["predictions"][0]["label"] == expected["label"]
    finally:
        s.stop()
