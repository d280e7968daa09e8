"""A bundle behind HTTP: FastAPI on uvicorn, requests that arrive together predicted as one batch.

Endpoints:

- ``POST /predict``: images, recordings or DICOM files as multipart ``files`` (image, medical, audio models and
  detectors), texts as JSON ``{"texts": [...]}`` (text models); the answer is what ``transferkit predict --json``
  prints, one object per input, under ``"predictions"``.
- ``GET /health``: ``{"status": "ok"}`` once the model is loaded; ``GET /metadata``: task, labels, backbone, the test
  scores and the model card; ``GET /docs``: the OpenAPI page.

Uploaded files are written to a private temporary folder and read by the model's own task, exactly as ``predict``
reads files (EXIF orientation, DICOM windows, resampling), then deleted. Every bad request is a 4xx JSON
``{"error": "..."}``: a body over the size limit (413), too many inputs (413), a file type the model does not read
(415), malformed JSON or an unreadable file, an image over the pixel limit, a recording or text too long (400), a
missing or wrong bearer token (401).

Why FastAPI + uvicorn rather than LitServe: the batching here is a few lines over an asyncio queue, and FastAPI
brings the request validation, the OpenAPI page and the multipart parsing that users of the Hugging Face stack
already know; uvicorn's SIGTERM handling finishes the requests in flight before it exits.
"""

# no ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations (Request) as objects
import asyncio
import hmac
import json
import re
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import TransferkitError, need

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Limits:
    """What one request may carry."""

    max_body_mb: float = 10.0
    read_timeout: float = 30.0  # seconds a request's body may stall before it is answered 408
    max_items: int = 64
    max_text_chars: int = 100_000
    max_audio_seconds: float = 600.0


class BadRequest(Exception):
    """A request the server refuses: its HTTP status and one line."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Batcher:
    """Requests that arrive together become one call of ``predict``.

    The first request of a batch waits up to ``window`` seconds for others (or until ``max_batch`` inputs are
    waiting); the batch then runs in one worker thread, so the event loop keeps accepting requests and the model is
    never run twice at once. When a batch fails on one request's input, each request is run alone, so only the bad
    one gets the error.
    """

    def __init__(self, predict: Any, max_batch: int = 32, window: float = 0.005):
        self.predict, self.max_batch, self.window = predict, max_batch, window
        self.queue: asyncio.Queue | None = None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict")
        self.task: asyncio.Task | None = None
        self.requests = self.batches = 0  # served so far (GET /metadata shows them)

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.pool.shutdown(wait=True)

    async def submit(self, items: list[Any]) -> list[dict[str, Any]]:
        future = asyncio.get_running_loop().create_future()
        self.requests += 1
        await self.queue.put((items, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            size, deadline = len(jobs[0][0]), loop.time() + self.window
            while size < self.max_batch:
                try:
                    job = await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    break
                jobs.append(job)
                size += len(job[0])
            self.batches += 1
            items = [item for job, _ in jobs for item in job]
            try:
                rows = await loop.run_in_executor(self.pool, self.predict, items)
            except Exception:  # noqa: BLE001 - one request's bad input: run each alone to find whose
                for job_items, future in jobs:
                    try:
                        result = await loop.run_in_executor(self.pool, self.predict, job_items)
                    except Exception as err:  # noqa: BLE001 - handed to that request's handler
                        _settle(future, error=err)
                    else:
                        _settle(future, result=result)
                continue
            at = 0
            for job_items, future in jobs:
                _settle(future, result=rows[at : at + len(job_items)])
                at += len(job_items)


def _settle(future: asyncio.Future, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():  # the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class BodyLimit:
    """ASGI middleware: refuse a body over ``limit`` bytes with 413, from its Content-Length or, for a chunked body,
    as soon as the bytes received pass the limit (nothing larger is ever held); and a body that stalls for
    ``timeout`` seconds with 408 (a slow or stuck client does not hold a connection for ever)."""

    def __init__(self, app: Any, limit: int, timeout: float = 30.0):
        self.app, self.limit, self.timeout = app, limit, timeout

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _json_response(send, 413, self._message())
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            try:
                message = await asyncio.wait_for(receive(), self.timeout)
            except asyncio.TimeoutError:
                raise BadRequest(408, f"The request body stalled for {self.timeout:g} s: send it whole.") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BadRequest(413, self._message())
            return message

        try:
            await self.app(scope, limited, send)
        except BadRequest as err:
            await _json_response(send, err.status, str(err))

    def _message(self) -> str:
        return f"The request body is over {self.limit / 2**20:g} MB: send fewer or smaller inputs per request."


async def _json_response(send: Any, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def load_served(path: str | Path) -> Any:
    """The model ``serve`` answers with, loaded once: a bundle folder, or an exported ONNX folder (run with
    onnxruntime, :class:`~transferkit.export.runtime.ExportedModel`)."""
    from ..api import load

    path = Path(path)
    if (path / "export.json").is_file() and not (path / "config.json").is_file():
        from ..export.runtime import ExportedModel

        try:
            return ExportedModel(path)
        except ModuleNotFoundError as err:
            if err.name not in ("onnx", "onnxruntime"):
                raise
            raise TransferkitError(f"{path} is an exported ONNX folder, which serve runs with onnxruntime: pip install "
                                   "'transferkit[export]', or serve the bundle it came from.") from None
    return load(path)


def create_app(model: Any, folder: str | Path, token: str | None = None, limits: Limits | None = None,
               max_batch: int = 32, window_ms: float = 5.0) -> Any:
    """The FastAPI app serving ``model`` (loaded from ``folder``)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    limits = limits or Limits()
    folder = Path(folder)
    strings = getattr(getattr(model, "task", None), "inputs", "files") == "strings"
    suffixes = _suffixes(model)
    batcher = Batcher(lambda items: _predict(model, items), max_batch=max_batch, window=window_ms / 1000)

    @asynccontextmanager
    async def lifespan(_app: Any):
        batcher.start()
        yield
        await batcher.stop()

    hidden = {"docs_url": None, "redoc_url": None, "openapi_url": None} if token else {}
    app = FastAPI(title="transferkit", lifespan=lifespan, description=f"A {_task_name(model)} model: POST /predict",
                  **hidden)  # with a token, no page answers without it

    @app.exception_handler(BadRequest)
    async def bad_request(_request: Request, err: BadRequest) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=err.status)

    @app.exception_handler(TransferkitError)
    async def bad_input(_request: Request, err: TransferkitError) -> JSONResponse:
        return JSONResponse({"error": for_client(str(err))}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        return JSONResponse({"error": f"Malformed request: {first.get('msg', 'not what /predict takes')}."},
                            status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, err: Exception) -> JSONResponse:  # a bug: no traceback to the client
        return JSONResponse({"error": f"Internal error ({type(err).__name__}); the server log has the details."},
                            status_code=500)

    def authorise(request: Request) -> None:
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise BadRequest(401, "Missing or wrong bearer token: send 'Authorization: Bearer <token>'.")

    @app.get("/health")
    async def health(request: Request) -> dict[str, str]:
        authorise(request)
        return {"status": "ok"}

    @app.get("/metadata")
    async def metadata(request: Request) -> dict[str, Any]:
        authorise(request)
        card = folder / "model_card.md"
        meta = getattr(model, "meta", {}) or {}
        return {"task": _task_name(model), "labels": list(getattr(model, "classes", [])),
                "backbone": meta.get("backbone"), "metrics": (meta.get("metrics") or {}).get("test"),
                "inputs": "JSON {\"texts\": [...]}" if strings else f"multipart files ({', '.join(sorted(suffixes))})",
                "limits": limits.__dict__, "served": {"requests": batcher.requests, "batches": batcher.batches},
                "model_card": card.read_text() if card.is_file() else None}

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        authorise(request)
        t = time.perf_counter()
        if strings:
            items = await _texts(request, limits)
            rows = await batcher.submit(items)
        else:
            with tempfile.TemporaryDirectory(prefix="transferkit-upload-") as tmp:
                uploads = await _files(request, Path(tmp), suffixes, limits, model)
                names = {str(p): name for p, name in uploads}  # the upload's own name, not ours
                try:
                    rows = await batcher.submit([p for p, _ in uploads])
                except TransferkitError as err:
                    message = str(err)
                    for path, name in names.items():
                        message = message.replace(path, name)
                    raise BadRequest(400, for_client(message.replace(tmp, "<upload>"))) from None
                rows = [{**r, "input": names.get(str(r.get("input")), r.get("input"))} for r in rows]
        return {"predictions": rows, "seconds": round(time.perf_counter() - t, 4)}

    app.state.batcher = batcher
    return app


# a clause that tells a command-line user what to pass ("(or pass --skip-bad)", ", or --skip-bad to skip such
# files", ": pass --max-image-pixels N if you trust it"): the server's operator chose those, a client cannot
CLI_HINT = re.compile(r"(?:[,:;]\s*|\s*\()(?:or\s+)?(?:pass\s+)?(?:--[a-z][a-z-]*|skip_bad=True)"
                      r"(?:\([^)]*\)|[^.()]|\.(?=\S))*\)?")


def for_client(message: str) -> str:
    """An error message as a client of the server reads it: the data's problem, without the command-line options
    that only the operator can set."""
    return CLI_HINT.sub("", message)


def _task_name(model: Any) -> str:
    task = getattr(model, "task", None)
    return getattr(task, "bundle_task", None) or "object-detection"


def _suffixes(model: Any) -> set[str]:
    from ..data.audio import AUDIO_SUFFIXES
    from ..data.medical import DICOM_SUFFIXES
    from ..data.sources import IMAGE_SUFFIXES

    modality = getattr(model, "modality", "image")  # the backbone's: image, text or audio
    if modality == "audio":
        return set(AUDIO_SUFFIXES)
    medical = getattr(getattr(model, "task", None), "name", None) == "medical"  # the task that reads its inputs
    return set(IMAGE_SUFFIXES) | (set(DICOM_SUFFIXES) | {".nii", ".gz"} if medical else set())


def _predict(model: Any, items: list[Any]) -> list[dict[str, Any]]:
    if getattr(model, "task", None) is None or not hasattr(model, "classes"):  # a detector
        return model.predict(items)
    return model.predict(items, top_k=len(model.classes))


async def _texts(request: Any, limits: Limits) -> list[str]:
    kind = request.headers.get("content-type", "")
    if kind and not kind.startswith("application/json"):
        raise BadRequest(415, f'A text model takes JSON {{"texts": [...]}}, not {kind.split(";")[0]}.')
    try:
        body = json.loads(await request.body() or b"null")
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested deeper than Python's stack
        raise BadRequest(400, 'Malformed JSON: send {"texts": ["first text", ...]}.') from None
    texts = body.get("texts") if isinstance(body, dict) else None
    if isinstance(body, dict) and isinstance(body.get("text"), str):
        texts = [body["text"]]
    if not isinstance(texts, list) or not texts:
        raise BadRequest(400, 'Send {"texts": [...]} with one or more non-empty strings.')
    blank = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if blank:
        raise BadRequest(400, f"Text #{blank[0]} is {'empty' if isinstance(texts[blank[0]], str) else 'not a string'}"
                              ': send non-empty strings in "texts".')
    if len(texts) > limits.max_items:
        raise BadRequest(413, f"{len(texts)} texts in one request, over {limits.max_items}: split the request.")
    long = [i for i, t in enumerate(texts) if len(t) > limits.max_text_chars]
    if long:
        raise BadRequest(400, f"Text #{long[0]} has {len(texts[long[0]]):,} characters, over "
                              f"{limits.max_text_chars:,}: send shorter texts.")
    return texts


async def _files(request: Any, folder: Path, suffixes: set[str], limits: Limits, model: Any
                 ) -> list[tuple[Path, str]]:
    """The uploaded files, written into ``folder`` as ``NNNN.suffix`` (the client's name can be anything: too long,
    a NUL, a path), each with the name the client gave it; checked for count, type and (audio) duration."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise BadRequest(415 if request.headers.get("content-type") else 400,
                         "Send the files as multipart/form-data, field name 'files'.")
    try:
        form = await request.form(max_files=limits.max_items + 1, max_fields=limits.max_items + 8)
    except BadRequest:  # the body limit, reached while parsing
        raise
    except Exception as err:  # noqa: BLE001 - starlette's multipart errors: one line
        if "Too many files" in str(err):
            raise BadRequest(413, f"Over {limits.max_items} files in one request: split the request.") from None
        raise BadRequest(400, f"Unreadable multipart body ({str(err) or type(err).__name__}).") from None
    uploads = [f for f in form.getlist("files") if hasattr(f, "filename")]
    if not uploads:
        plain = [v for v in form.getlist("files") if isinstance(v, str)]
        raise BadRequest(400, "No files: send them as multipart/form-data in the field 'files'"
                              + (", each with a filename (curl -F files=@photo.jpg)." if plain else "."))
    if len(uploads) > limits.max_items:
        raise BadRequest(413, f"{len(uploads)} files in one request, over {limits.max_items}: split the request.")
    paths = []
    for i, up in enumerate(uploads):
        full = (up.filename or "").replace("\\", "/").rsplit("/", 1)[-1] or f"upload{i}"
        name = full[:200]  # as the answer names it
        plain = full.replace("\0", "").lower()
        suffix = ".nii.gz" if plain.endswith(".nii.gz") else ("." + plain.rsplit(".", 1)[1] if "." in plain else "")
        if suffix not in suffixes and not (suffix == ".nii.gz" and ".gz" in suffixes):
            raise BadRequest(415, f"{name!r}: this model reads {', '.join(sorted(suffixes))} files, not "
                                  f"{suffix or 'files without a suffix'}.")
        path = folder / f"{i:04d}{suffix}"  # our name on disk; the client's only in the answer
        with path.open("wb") as out:
            shutil.copyfileobj(up.file, out)
        paths.append((path, name))
    if getattr(model, "modality", None) == "audio":
        import soundfile as sf

        for p, name in paths:
            try:
                seconds = sf.info(str(p)).duration
            except Exception:  # noqa: BLE001 - the model's reader names the problem below
                continue
            if seconds > limits.max_audio_seconds:
                raise BadRequest(400, f"{name} lasts {seconds:.0f} s, over {limits.max_audio_seconds:g} s: send "
                                      "shorter recordings.")
    return paths


def bind_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (one line), or None."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return f"--host {host} is not an address or a name this machine resolves."
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return f"Port {port} on {host} is in use: stop what listens there, or pick another --port."
            if err.errno == errno.EADDRNOTAVAIL:
                return f"--host {host} is not an address of this machine: give one of its own (or 0.0.0.0)."
            if err.errno == errno.EACCES:
                return f"Port {port} needs privileges here: pick one from 1024 up."
            return f"Cannot listen on {host}:{port} ({err.strerror or err})."
    return None


def is_loopback(host: str) -> bool:
    import ipaddress

    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(path: str | Path, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          limits: Limits | None = None, max_batch: int = 32, window_ms: float = 5.0) -> None:
    """Load the bundle at ``path`` once and serve it until SIGTERM/Ctrl-C (requests in flight finish first).

    Raises:
        TransferkitError: a non-loopback address without a token, a port in use, an unusable bundle.
    """
    import os

    from ..console import info

    need("fastapi", "serve", "transferkit serve")
    need("multipart", "serve", "transferkit serve", package="python-multipart")
    uvicorn = need("uvicorn", "serve", "transferkit serve")

    if token is not None and not token.strip():
        raise TransferkitError("--token is blank: give a secret no client could guess (or leave it out on loopback).")
    if not is_loopback(host) and not token:
        raise TransferkitError(f"Serving on {host} (reachable from other machines) needs a bearer token: pass "
                               "--token or set TRANSFERKIT_TOKEN.")
    if not 1 <= port <= 65535:
        raise TransferkitError(f"--port {port} is not a TCP port: give 1-65535.")
    problem = bind_problem(host, port)
    if problem:
        raise TransferkitError(problem)
    os.environ.setdefault("TRANSFERKIT_QUIET", "1")  # no progress bars per request in the server's log
    from ..bundle.hub import local_folder

    path = local_folder(path)  # a hub id: served from its local copy (/metadata reads its card)
    model = load_served(path)
    limits = limits or Limits()
    app = BodyLimit(create_app(model, path, token, limits, max_batch, window_ms), int(limits.max_body_mb * 2**20),
                    limits.read_timeout)
    info(f"serving {path} on http://{host}:{port} (POST /predict, GET /health, /metadata"
         + (", /docs); no token: loopback only" if not token else "; every request needs the bearer token)"))
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30)
