"""Tasks: one registered object per kind of work, owning everything that differs between kinds of data.

=========  ======================================================================================================
image      image classification: class folders or path,label tables; decoded once, augmented batches
medical    image classification with patient-level splits, class weights, calibration, an operating threshold
text       text classification (single- and multi-label): token ids, tokenised once
audio      audio classification: recordings cut into windows, scored per recording
detection  object detection (COCO / YOLO / VOC boxes): FCOS on the backbone's feature maps, COCO mAP
=========  ======================================================================================================

Add one by subclassing :class:`Task` (or :class:`ClassificationTask`) and decorating it with
:func:`register_task`; ``transferkit.fit(data, modality="<name>")`` then runs it, and the contract tests cover it.
"""

from __future__ import annotations

from typing import Any

from ..bundle.format import register_reader, unregister_reader
from ..errors import TransferkitError
from .audio import AudioTask
from .base import Prepared, RunSettings, Task, refuse_option
from .classification import ClassificationTask
from .detection import DetectionTask
from .image import ImageTask
from .medical import MedicalTask
from .text import TextTask

TASKS: dict[str, Task] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make ``cls`` a task, under ``cls.name`` (a later registration under a name replaces it)."""
    if not cls.name or cls.Options is None:
        raise TypeError(f"{cls.__name__} needs a name and an Options dataclass to be registered as a task")
    TASKS[cls.name] = task = cls()
    register_reader(task)  # bundles saved by this task are read by it (bundles never import tasks)
    return cls


for _cls in (DetectionTask, TextTask, AudioTask, MedicalTask, ImageTask):
    register_task(_cls)


def unregister_task(name: str) -> None:
    """Remove the task ``name`` (a plugin's, or a test's) from the registry and from the bundle readers."""
    TASKS.pop(name, None)
    unregister_reader(name)


def get_task(name: str) -> Task:
    """The registered task ``name``; one clear line for an unknown one."""
    if name not in TASKS:
        raise TransferkitError(f"Modality {name!r} is unknown: choose auto, {', '.join(sorted(TASKS))}.")
    return TASKS[name]


def list_tasks() -> list[str]:
    return sorted(TASKS)


def resolve_task(data: Any, name: str = "auto", hints: dict[str, Any] | None = None,
                 exclude: tuple[str, ...] = ()) -> Task:
    """The task for ``data``: ``name`` when given, else the first registered task (in ``sniff_order``) whose
    :meth:`~Task.sniff` recognises the data, leaving out those named in ``exclude``. ``hints`` are the options
    the user gave (e.g. ``labels``, ``text_column``), which some tasks sniff by."""
    if name != "auto":
        return get_task(name)
    hints = dict(hints or {})  # tasks may note what they read about the data here, for the next one
    for task in sorted(TASKS.values(), key=lambda t: t.sniff_order):
        if task.name not in exclude and task.sniff(data, hints):
            return task
    raise TransferkitError("These data match no task: pass modality= (one of " + ", ".join(sorted(TASKS)) + ").")


def task_options(task: Task, given: dict[str, Any]) -> Any:
    """``task``'s ``Options`` from the options the user gave (None values count as not given); an option that
    belongs to another task gets one line saying whose it is."""
    from dataclasses import fields

    own = {f.name for f in fields(task.Options)}
    for key, value in given.items():
        if value is not None and key not in own:
            raise refuse_option(key, task, _owner(key))
    return task.options(**{k: v for k, v in given.items() if k in own and v is not None})


def _owner(option: str) -> Task | None:
    """The task whose own Options class declares ``option`` (not one that inherits it: window is image's)."""
    for task in TASKS.values():
        declaring = next((k for k in task.Options.__mro__ if option in getattr(k, "__annotations__", {})), None)
        if declaring is task.Options:
            return task
    return None


def option_names() -> set[str]:
    """Every option some registered task takes (what ``fit`` passes to tasks rather than to strategies)."""
    from dataclasses import fields

    return {f.name for t in TASKS.values() for f in fields(t.Options)}


def task_for_bundle(config: dict[str, Any]) -> Task:
    """The task that reads a bundle's ``config.json`` (see :meth:`Task.matches_bundle`)."""
    from ..bundle.format import reader_for

    return reader_for(config)


__all__ = ["TASKS", "ClassificationTask", "Prepared", "RunSettings", "Task", "get_task", "list_tasks", "option_names",
           "register_task", "resolve_task", "unregister_task", "task_for_bundle", "task_options"]
