"""What a task is: the one place that knows a kind of data (images, medical images, texts, audio, boxes).

A :class:`Task` recognises its data (:meth:`~Task.sniff`), reads it into splits and finishes the backbone's
preprocessing from the training data (:meth:`~Task.prepare`), hands strategies its batches (:meth:`~Task.loaders`,
:meth:`~Task.batch_input`, :meth:`~Task.aggregate`), scores a trained model (:meth:`~Task.finish`), writes its report
(:meth:`~Task.write`), and turns raw inputs into model inputs for ``predict``/``evaluate`` and back from a bundle
(:meth:`~Task.encode`, :meth:`~Task.save_files`, :meth:`~Task.load_backbone`). The generic run
(:func:`transferkit.pipeline.run`) calls these in order and asks no question about the data itself.

Settings every run has live in :class:`RunSettings`; what only one task understands lives in its ``Options``
dataclass (typed, validated in ``__post_init__``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..errors import (MAX_COUNT, MAX_INPUT_SIZE, MAX_SEED, MIN_FIT_SIZE, TransferkitError, check_number,
                      check_precision)


MAX_WORKERS = 256  # loader processes: more than any machine has cores for; a typo must not fork thousands
MAX_BUDGET = 10**9  # seconds, about 32 years: past any run, and a float still holds it


def check_budget(seconds: float) -> None:
    """Refuse a time budget that is not a positive, finite number of seconds (one wording for fit and the API)."""
    check_number("budget", seconds, low=0, low_open=True, high=MAX_BUDGET, example="600 (seconds), or 90s, 10m, 1h30m")


@dataclass
class RunSettings:
    """What every run has, whatever the data. ``transferkit.fit``'s keyword arguments map onto these and onto the
    task's own ``Options``."""

    backbone: str | None = None  # one name (several are ranked before the run; see transferkit.pipeline)
    strategy: str = "auto"
    out: Path | None = None
    seconds: float | None = None  # the time budget for training, in seconds; None: no budget
    seed: int = 0
    skip_bad: bool = False
    val_fraction: float | None = None
    test_fraction: float | None = None
    cv: int | None = None
    precision: str = "auto"  # auto, bf16, fp16 or no (see engine.accel.resolve_precision)
    arch: str | None = None
    cpu: bool | None = None
    resume: bool = False
    image_size: int | None = None
    scratch_baseline: bool = False
    # loader processes per training process; None: chosen by device (engine.accel.default_workers)
    workers: int | None = None
    compile: bool = False  # torch.compile the network that fine-tuning trains (engine.optim.compile_module)
    # classifiers: the report's explanation maps, shortcut check and deletion score (evaluation.explain)
    explain: bool = True
    strategy_options: dict[str, Any] = field(default_factory=dict)
    # further fine-tuning (tasks.continued): the bundle to start from, old data to replay (the fraction of each old
    # class drawn into training) and the old task's test data to measure forgetting on
    init_from: Path | None = None
    replay: Any = None
    replay_fraction: float = 0.25  # tasks.continued.DEFAULT_REPLAY_FRACTION
    old_test: Any = None
    # a caller's step between scoring and writing (transferkit search adds its record): called as
    # ``after_training(model, metrics)``, it may add to both (metrics.json; model.meta, which the bundle keeps) and
    # return files for the run folder ({name: bytes}, written with the rest and swapped in with it)
    after_training: Any = None

    def __post_init__(self) -> None:
        if self.cv is not None:
            check_number("cv", self.cv, low=2, high=MAX_COUNT, whole=True, example="5")
        for name in ("val_fraction", "test_fraction"):
            if getattr(self, name) is not None:
                check_number(name, getattr(self, name), low=0, high=1, high_open=True, example="0.2")
        if (self.val_fraction or 0) + (self.test_fraction or 0) >= 1:
            raise TransferkitError(f"val_fraction {self.val_fraction} and test_fraction {self.test_fraction} leave "
                                   "nothing to train on: together they must stay below 1, e.g. 0.15 and 0.2.")
        if self.seconds is not None:
            check_budget(self.seconds)
        check_number("seed", self.seed, low=0, high=MAX_SEED, whole=True, example="0")
        if self.image_size is not None:
            check_number("image_size", self.image_size, low=MIN_FIT_SIZE, high=MAX_INPUT_SIZE, whole=True,
                         example="224")
        if self.workers is not None:
            check_number("workers", self.workers, low=0, high=MAX_WORKERS, whole=True, example="2")
        check_precision(self.precision)
        if self.out is not None:
            self.out = Path(self.out)
        check_number("replay_fraction", self.replay_fraction, low=0, low_open=True, high=1, example="0.25")
        if self.init_from is not None:
            self.init_from = Path(self.init_from)


@dataclass
class Prepared:
    """A task's data, read once: the splits as loaded (``train``/``val``/``test`` sources and ``classes``), the
    backbone with its preprocessing finished from the training data, and each split encoded for the network."""

    splits: Any
    backbone: Any
    encoded: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    copies: Any = None  # the copies found across splits (data.copies.Copies), found once when the data are read
    start: Any = None  # the bundle this run continues from (tasks.continued.StartPoint), or None
    classical: Any = None  # the classical baseline's predictions, made before training (scratch_baseline runs)

    @property
    def classes(self) -> list[str]:
        return list(self.splits.classes)


class Task:
    """One kind of work. Subclasses set the class attributes and override what differs; registered with
    :func:`transferkit.tasks.register_task`.

    The defaults here suit classification on a :class:`~transferkit.backbones` backbone; a task for other data
    overrides :meth:`sniff`, :meth:`prepare`, the batch methods and, if its model is not a classifier,
    :meth:`finish`/:meth:`write`.
    """

    name: ClassVar[str] = ""  # registry key, e.g. "image"; what ``modality=`` names
    title: ClassVar[str] = ""  # for people: "image classification"
    bundle_task: ClassVar[str] = ""  # config.json "task", e.g. "image-classification"
    run_label: ClassVar[str] = ""  # metrics.json "task" when it says more than bundle_task ("medical-classification")
    modality: ClassVar[str] = "image"  # what backbones and strategies are built for: image, text, audio, detection
    strategies_for: ClassVar[str | None] = None  # the strategy family these data take (default: ``modality``)
    Options: ClassVar[type] = None  # type: ignore[assignment]  # dataclass of this task's own settings
    sniff_order: ClassVar[int] = 100  # lower sniffs first (boxes before texts before images)
    ranks_backbones: ClassVar[bool] = True  # several backbones may be ranked (LogME on pooled features) first
    inputs: ClassVar[str] = "files"  # what predict takes: "files" (paths or arrays) or "strings"
    reading_options: ClassVar[tuple[str, ...]] = ()  # what evaluate's read_labelled takes besides the source
    unit: ClassVar[str] = "examples"  # what the report calls one example: "images", "texts", "recordings"
    plural: ClassVar[str] = ""  # how an error names this task's data: "texts", "audio", "images"
    min_classes: ClassVar[int] = 2  # classes a training split must hold (a classifier needs two, a detector one)

    # -- recognising and reading data -------------------------------------------------------------------------
    def sniff(self, data: Any, options: Any) -> bool:
        """Whether ``data`` looks like this task's data (``auto`` resolution)."""
        return False

    def matches_bundle(self, config: dict[str, Any]) -> bool:
        """Whether this task reads the bundle whose ``config.json`` is ``config``."""
        return config.get("task") == self.bundle_task

    def check_backbones(self, names: list[str]) -> None:
        """Refuse several backbones where this task cannot rank them (before any work)."""
        if not self.ranks_backbones:
            raise TransferkitError(f"{self.title.capitalize()} takes one backbone: train the others in runs of "
                                   "their own.")

    def options(self, **given: Any) -> Any:
        """This task's ``Options`` from keyword arguments (unknown names are the caller's to refuse)."""
        return self.Options(**given) if self.Options is not None else None

    def check(self, settings: RunSettings, options: Any) -> None:
        """Refuse settings that do not suit this task before any data is read (cheap checks only)."""

    def start_and_splits(self, data: Any, settings: RunSettings, options: Any) -> tuple[Any, Any]:
        """The bundle a run continues from (``settings.init_from``; None for a run from pretrained weights) and
        ``data`` read into splits, the bundle's classes first and old examples replayed into training
        (:mod:`transferkit.tasks.continued`)."""
        from .continued import continue_splits, load_start

        start = load_start(self, settings, options)
        splits = self.load_splits(data, settings, options, known=start.classes if start is not None else ())
        return start, continue_splits(splits, start, self, settings, options)

    def load_splits(self, data: Any, settings: RunSettings, options: Any, known: Sequence[str] = ()) -> Any:
        """Read ``data`` into splits (train, val or None, test or None, ``classes``), as :meth:`prepare` does
        before it builds the backbone (``compare`` draws its label budgets from these). ``known``: the classes of
        the bundle a run continues from: the training split may then hold one class only, and the other splits
        classes it lacks."""
        raise NotImplementedError

    def prepare(self, data: Any, backbone: str | None, settings: RunSettings, options: Any,
                parts: tuple[str, ...] = ("train", "val", "test")) -> Prepared:
        """Read ``data`` into splits, build the backbone and finish its preprocessing from the training split, and
        encode each of ``parts`` that exists."""
        raise NotImplementedError

    def check_prepared(self, prepared: Prepared, settings: RunSettings, options: Any) -> None:
        """Checks that need the data (e.g. a named class exists) before any training; here: ``cv`` folds beyond
        what the training split can give (an example, or a patient, each) are said to be fewer, not cut silently."""
        splits = getattr(prepared, "splits", None)
        train = getattr(splits, "train", None)
        if settings.cv is None or train is None or getattr(splits, "val", None) is not None:  # no folds then
            return
        groups = getattr(train, "groups", None)
        units = len(set(groups)) if groups is not None else len(train)
        if settings.cv > units:
            from ..console import warn

            what = "patients" if groups is not None else "examples"
            warn(f"cv {settings.cv}: the training split holds {units} {what}, so {units} folds (one each)")

    # -- what strategies see ----------------------------------------------------------------------------------
    def strategy_names(self) -> list[str]:
        """The strategies this task accepts (the contract tests run each)."""
        from ..strategies import strategy_names

        return strategy_names(self.strategies_for or self.modality)

    def create_strategy(self, name: str, backbone: Any, overrides: dict[str, Any]) -> Any:
        """The strategy ``name`` with this task's (and ``backbone``'s) defaults, then ``overrides``. ``backbone``
        None: only validate the name and options."""
        from ..strategies import create_strategy

        family = self.strategies_for or self.modality
        profile = getattr(backbone, "profile", family) if backbone is not None else None
        return create_strategy(name, family, profile, **overrides)

    def train_task(self, prepared: Prepared, settings: RunSettings, options: Any, accelerator: Any,
                   deadline: float | None, work_dir: Path | None) -> Any:
        """What the strategy receives (:class:`~transferkit.strategies.TrainTask`)."""
        from ..strategies import TrainTask

        dec = prepared.encoded
        start = None
        if prepared.start is not None:  # a run from a bundle: its head, grown to these data's classes
            from ..strategies import StartHead
            from .continued import start_head

            start = StartHead(*start_head(prepared.start, prepared.classes, settings.seed))
        return TrainTask(spec=prepared.backbone.spec, backbone=prepared.backbone, train=dec["train"],
                         val=dec.get("val"), classes=prepared.classes, accelerator=accelerator, seed=settings.seed,
                         deadline=deadline, work_dir=work_dir, cv=settings.cv, batches=self,
                         workers=loader_workers(settings, accelerator), compile=settings.compile, start=start)

    def loaders(self, task: Any, batch_size: int, augment: bool = False, hflip: bool = True) -> tuple:
        """Training loader (epoch-seeded shuffling, augmentation when ``augment``) and validation loader (None
        without a validation split), for ``task`` (a TrainTask of this kind)."""
        from torch.utils.data import DataLoader

        from ..engine.accel import loader_options
        from ..engine.sampling import EpochShuffleSampler

        n_train = self.rows(task.train)
        # with a few dozen examples a full batch would mean two or three steps per epoch: keep about eight or more
        bs = max(1, min(batch_size, max(8, n_train // 8), n_train))
        train_ds = self.dataset(task.train, augment, hflip)
        sampler = self.sampler(task) or EpochShuffleSampler(n_train, task.seed)
        # pinned memory on CUDA (asynchronous copies), workers kept across epochs: engine.accel.loader_options
        options = loader_options(task.workers, getattr(task.accelerator, "device", "cpu"))
        train = DataLoader(train_ds, batch_size=bs, sampler=sampler, drop_last=n_train > bs, **options)
        val = None
        if task.val is not None:
            val = DataLoader(self.dataset(task.val), batch_size=max(bs, self.val_batch), **options)
        return train, val

    val_batch: ClassVar[int] = 32

    def dataset(self, data: Any, augment: bool = False, hflip: bool = True) -> Any:
        """A torch Dataset over encoded data (augmented draws when ``augment``)."""
        raise NotImplementedError

    has_tta: ClassVar[bool] = False  # whether tta_views gives views (image and audio classifiers)

    def tta_views(self, data: Any) -> list[Any]:
        """Test-time views of encoded ``data`` whose predictions are averaged with the data's own (images: flips
        and crops; audio: shifted windows); empty where the task has none."""
        return []

    def sampler(self, task: Any) -> Any:
        """A training sampler other than epoch-seeded shuffling (e.g. class-balanced), or None."""
        return None

    def batch_input(self, backbone: Any) -> Callable[[Any], Any]:
        """Loader batch -> model input."""
        return lambda x: x

    def aggregate(self, task: Any) -> Callable | None:
        """Merge validation rows before scoring (audio: a recording's windows), or None."""
        return None

    def sample(self, data: Any, n: int) -> Any:
        """The first ``n`` encoded examples as a loader batch (for timing and shape checks)."""
        raise NotImplementedError

    def rows(self, data: Any) -> int:
        """How many rows the network sees for ``data`` (audio: windows)."""
        return len(data)

    def before_training(self, train: Any, prepared: Prepared, settings: RunSettings,
                        timings: dict[str, float]) -> None:
        """Work that does not depend on the trained model (a baseline), done before the budget is planned; its
        seconds go into ``timings``."""

    def scoring_seconds(self, train: Any, prepared: Prepared) -> float:
        """About how long scoring the validation and test sets will take after training (kept out of the training
        budget; see :mod:`transferkit.tasks.budget`); 0 when this task cannot tell."""
        return 0.0

    # -- after training ---------------------------------------------------------------------------------------
    def finish(self, result: Any, prepared: Prepared, settings: RunSettings, options: Any, train: Any,
               extras: dict[str, Any]) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        """The trained model, everything ``metrics.json`` holds about it (scores on val/test, history...), and what
        :meth:`write` draws from (e.g. the scored set's probabilities)."""
        raise NotImplementedError

    def write(self, out: Path, model: Any, metrics: dict[str, Any], prepared: Prepared,
              plots: dict[str, Any]) -> dict[str, str]:
        """Write the bundle (``out/model``), the metrics, plots and report; return the files written."""
        raise NotImplementedError

    # -- the bundle side --------------------------------------------------------------------------------------
    def encode(self, model: Any, inputs: Any, skip_bad: bool) -> tuple[Any, list[Any]]:
        """Raw inputs for ``predict`` -> model-ready data, and the inputs that were kept."""
        raise NotImplementedError

    def read_labelled(self, model: Any, source: Any, skip_bad: bool, **options: Any) -> Any:
        """A labelled source for ``evaluate`` -> encoded data with targets in ``model.classes`` order."""
        raise NotImplementedError

    def save_files(self, backbone: Any, folder: Path) -> None:
        """Extra bundle files the backbone needs to be rebuilt offline (tokenizer, encoder config...)."""

    def load_backbone(self, folder: Path, spec: Any, config: dict[str, Any]) -> Any:
        """Rebuild the backbone from a bundle folder (no download, no code run)."""
        raise NotImplementedError

    def recorded_files(self, prepared: Prepared) -> dict[str, Any]:
        """What the bundle records of its data so that ``export`` can check itself later: the test split's files
        (absolute paths) with their labels, and up to 64 training files spread over the split (calibration for
        INT8). Nothing when the inputs are not files (texts, arrays) or the test files are over 5,000."""
        import numpy as np

        if self.inputs != "files":
            return {}
        out: dict[str, Any] = {}
        for part, limit in (("test", 5000), ("train", 64)):
            split, enc = getattr(prepared.splits, part, None), prepared.encoded.get(part)
            if split is None or enc is None or not isinstance(getattr(split, "items", None), list):
                continue  # a task of one's own may keep its examples otherwise
            kept = list(getattr(enc, "kept", None) or range(len(split.items)))
            if part == "train":
                kept = [kept[i] for i in np.unique(np.linspace(0, len(kept) - 1, min(limit, len(kept))).astype(int))]
            elif len(kept) > limit:
                continue
            items = [split.items[i] for i in kept]
            if not all(isinstance(p, (str, Path)) for p in items):
                continue
            files = [str(Path(p).resolve()) for p in items]
            if part == "test":
                labels = [split.labels[i] for i in kept] if isinstance(getattr(split, "labels", None), list) else []
                if labels and all(isinstance(y, str) for y in labels):  # single-label: a class name each
                    out["test_labels"] = labels
                out["test_files"] = files
            else:
                out["calibration_files"] = files
        return out

    def explainer(self, model: Any) -> Any:
        """What explains ``model``'s predictions on this task's encoded data (an explainer of
        :mod:`transferkit.evaluation.explainers`: maps over images and spectrograms, word attributions of texts).

        Raises:
            TransferkitError: this task, or this model's backbone, has no explanation (one line saying which have).
        """
        raise TransferkitError(f"Explanations are not available for {self.title} models: image, medical, text and "
                               "spectrogram-audio classifiers have them.")

    def describe_rows(self, rows: list[dict[str, Any]], data: Any) -> None:
        """Add what this task says per predicted input (audio: how many windows were averaged)."""

    def export_spec(self, model: Any) -> Any:
        """How ``model`` becomes an ONNX graph: an :class:`~transferkit.export.onnx.ExportSpec` (the graph's inputs,
        the steps outside it as JSON, the reference script)."""
        raise TransferkitError(f"Exporting {self.title} models is not available: this task gives no export spec "
                               "(transferkit's image, medical, text and audio classifiers and detectors export).")


# what to set instead, when an option of one kind of data is given for another (option, task) -> hint
INSTEAD = {("max_length", "image"): "for images set image_size", ("max_length", "medical"): "for images set image_size",
           ("max_length", "audio"): "for audio set clip_seconds", ("clip_seconds", "text"): "for texts set max_length"}


def refuse_option(name: str, task: Task, home: Task | None) -> TransferkitError:
    """The one line for an option given to a task that does not take it: whose option it is, and what to set
    instead where there is an equivalent."""
    if not task.ranks_backbones:  # detection: none of the classification options mean anything there
        return TransferkitError(f"{name} does not apply to {task.name}: leave it out.")
    if home is None:
        return TransferkitError(f"fit() has no option {name!r}.")
    hint = INSTEAD.get((name, task.name))
    return TransferkitError(f"{name} applies to {home.plural}; " + (f"{hint}." if hint else
                                                                    f"these data are {task.name}."))


def loader_workers(settings: RunSettings, accelerator: Any) -> int:
    """``settings.workers``, or when not given the device's default (:func:`transferkit.engine.accel.default_workers`:
    none on the CPU, up to 8 on CUDA)."""
    if settings.workers is not None:
        return settings.workers
    from ..engine.accel import default_workers

    return default_workers(accelerator.device, accelerator.num_processes)


def run_record(result: Any, train: Any, settings: RunSettings, timings: dict[str, float],
               plan: Any = None) -> dict[str, Any]:
    """What ``metrics.json`` says about any run, whatever the task: trainable parameters, precision, processes,
    device, seed, budget (and how it was split: ``plan``, a :class:`~transferkit.tasks.budget.BudgetPlan`), timings
    and the strategy's details."""
    accelerator = train.accelerator
    return {"trainable_params": result.trainable_params, "precision": str(accelerator.mixed_precision),
            "processes": accelerator.num_processes, "device": str(accelerator.device), "seed": settings.seed,
            "budget_s": settings.seconds, "budget": plan.to_dict() if plan is not None else None, "timings": timings,
            "details": result.details}


def data_kind(data: Any, hints: dict[str, Any]) -> str:
    """``image``, ``audio`` or ``medical`` by the files' names (:func:`transferkit.data.sources.detect_kind`),
    read once per resolution: several tasks sniff by it, and it lists up to 2,000 files."""
    if "data_kind" not in hints:
        from ..data.sources import detect_kind

        hints["data_kind"] = detect_kind(data)
    return hints["data_kind"]


def replace_preprocess(backbone: Any, **changes: Any) -> None:
    """Change the backbone's preprocessing (saved with the bundle, so predict reads alike)."""
    backbone.preprocess = dataclasses.replace(backbone.preprocess, **changes)
