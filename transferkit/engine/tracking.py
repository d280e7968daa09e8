"""Experiment tracking (``--log-with tensorboard|mlflow|all``) through Accelerate's tracker integration.

One tracker run per command (``fit``, ``pretrain``, ``search``, ``compare``): its settings as parameters, the curves
the run reports as it trains (each epoch's training loss, validation score and learning rate; each fold's score;
pre-training steps and evaluations; a search's trials; a comparison's runs), its final metrics, and the report and
plots as artifacts (TensorBoard: images and the report as text; MLflow: the files).

Offline by default, beside the run folder: TensorBoard writes ``<log dir>/tensorboard/<run name>`` (``tensorboard
--logdir runs/tensorboard``); MLflow a SQLite store ``<log dir>/mlflow.db`` with artifacts in ``<log dir>/mlartifacts``
(``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db``), unless ``MLFLOW_TRACKING_URI`` names a server.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import TransferkitError

TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow"}  # name -> the package it needs
EXPERIMENT = "transferkit"  # the MLflow experiment every run is logged under


def parse_log_with(value: str | list[str] | None) -> list[str]:
    """``tensorboard``, ``mlflow``, ``all`` or a comma-separated list -> the trackers; None or "" -> none. An unknown
    name or a missing package is refused in one line."""
    if value is None or value == "" or value == []:
        return []
    names = value if isinstance(value, (list, tuple)) else [v.strip() for v in str(value).split(",") if v.strip()]
    if names == ["all"]:
        names = list(TRACKERS)
    for name in names:
        if name not in TRACKERS:
            raise TransferkitError(f"--log-with {name!r} is unknown: choose tensorboard, mlflow or all.")
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise TransferkitError(f"--log-with {name} needs the {TRACKERS[name]} package: pip install "
                                   f"'transferkit[tracking]' (or pip install {TRACKERS[name]}).")
    return list(dict.fromkeys(names))


def flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``a/b`` keys; only numbers (finite), strings and booleans kept (what trackers take)."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= flat(v, key + "/")
        elif isinstance(v, bool) or v is None:
            out[key] = str(v)
        elif isinstance(v, (int, float)):
            if math.isfinite(v):
                out[key] = v
        elif isinstance(v, (str, Path)):
            out[key] = str(v)
    return out


def numbers(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in flat(values).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class Tracking:
    """The trackers of one command's run. ``log(values, step)`` logs numbers; :meth:`listen` logs what the run
    reports (:mod:`transferkit.engine.events`) for the length of a block; :meth:`finish` logs the final metrics and
    the files and closes the run."""

    def __init__(self, kinds: list[str], log_dir: Path, name: str, config: dict[str, Any]):
        self.kinds, self.log_dir, self.name, self.config = kinds, Path(log_dir), name, config
        self.trackers: list[Any] = []
        self.epoch_step = 0

    def start(self) -> Tracking:
        from accelerate.tracking import MLflowTracker, TensorBoardTracker

        self.log_dir.mkdir(parents=True, exist_ok=True)
        for kind in self.kinds:
            if kind == "tensorboard":
                tracker = TensorBoardTracker(self.name, self.log_dir / "tensorboard")
            else:
                import logging

                import mlflow

                logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its table-creation notes on every run
                if not os.environ.get("MLFLOW_TRACKING_URI"):
                    mlflow.set_tracking_uri(f"sqlite:///{(self.log_dir / 'mlflow.db').resolve()}")
                tracker = MLflowTracker(experiment_name=EXPERIMENT, run_name=self.name,
                                        logging_dir=str((self.log_dir / "mlartifacts").resolve()))
            try:
                tracker.start()
            except Exception as err:  # noqa: BLE001  (each library fails its own way; the message says which)
                raise TransferkitError(f"--log-with {kind}: cannot start the tracker in {self.log_dir} "
                                       f"({' '.join(str(err).split())[:200]}).") from None
            self.trackers.append(tracker)
        params = flat(self.config)
        for tracker in self.trackers:
            tracker.store_init_configuration(params)
        return self

    def log(self, values: dict[str, Any], step: int | None = None) -> None:
        values = numbers(values)
        if values:
            for tracker in self.trackers:
                tracker.log(values, step=step)

    def event(self, event: str, step: int, values: dict[str, Any]) -> None:
        """Engine events -> tracker curves. Epochs count on one axis across folds and runs (``epoch`` says which of
        its run's epochs it was)."""
        if event == "epoch":
            keep = {k: values.get(k) for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")}
            self.log({f"epoch/{k}": v for k, v in keep.items() if v is not None} | {"epoch/epoch": step},
                     self.epoch_step)
            self.epoch_step += 1
        elif event == "fold":
            self.log({"cv/fold_score": values.get("score"), "cv/fold_epochs": values.get("epochs")}, step)
        else:  # pretrain "step"/"evaluation", search "trial", compare "run": their own keys
            self.log({f"{event}/{k}": v for k, v in values.items() if k != "step"}, step)

    @contextmanager
    def listen(self, only: tuple[str, ...] | None = None) -> Iterator[None]:
        """Log the events reported inside the block (``only`` those kinds, e.g. a search's trials but not the
        epochs of each trial)."""
        from .events import listening

        def event(kind: str, step: int, values: dict[str, Any]) -> None:
            if only is None or kind in only:
                self.event(kind, step, values)

        with listening(event):
            yield

    def finish(self, metrics: dict[str, Any] | None = None, files: list[Path] | None = None) -> None:
        """Log ``metrics`` (flattened numbers, under ``final/``) and ``files`` (PNG as images, Markdown as text in
        TensorBoard; every file as an MLflow artifact), then close the run."""
        if metrics:
            self.log({"final": metrics})
        for tracker in self.trackers:
            for path in files or []:
                if not Path(path).is_file():
                    continue
                if tracker.name == "mlflow":
                    tracker.log_artifact(str(path))
                elif Path(path).suffix == ".png":
                    import numpy as np
                    from PIL import Image

                    with Image.open(path) as im:
                        pixels = np.asarray(im.convert("RGB"))
                    tracker.writer.add_image(Path(path).stem, pixels, dataformats="HWC")
                elif Path(path).suffix in (".md", ".txt"):
                    tracker.writer.add_text(Path(path).stem, Path(path).read_text(encoding="utf-8"))
            tracker.finish()
        self.trackers = []

    def abort(self) -> None:
        for tracker in self.trackers:
            try:
                tracker.finish()
            except Exception:  # noqa: BLE001  (closing after a failure: the failure is what the user sees)
                pass
        self.trackers = []


@contextmanager
def tracking(log_with: Any, log_dir: str | Path | None, out: str | Path | None, name: str | None,
             config: dict[str, Any]) -> Iterator[Tracking | None]:
    """The run's trackers (None without ``log_with``): logs beside ``out`` (in its parent folder) unless ``log_dir``
    says where, the run named ``name`` or after ``out``. The caller calls :meth:`Tracking.finish`; a failure closes
    the trackers."""
    kinds = parse_log_with(log_with)
    if not kinds:
        yield None
        return
    from ..rundir import beside

    folder = Path(log_dir) if log_dir is not None else beside(out)
    run_name = name or (Path(out).name if out is not None else "run")
    tracker = Tracking(kinds, folder, run_name, config).start()
    try:
        yield tracker
    except BaseException:
        tracker.abort()
        raise
    tracker.abort()  # already finished by the caller: nothing left open


def run_files(out: Path) -> list[Path]:
    """What a run folder holds worth keeping with its tracker run: the report and the plots."""
    out = Path(out)
    return sorted(p for p in [*out.glob("*.png"), *out.glob("report.md"), *out.glob("*.json")]
                  if not p.name.startswith("."))
