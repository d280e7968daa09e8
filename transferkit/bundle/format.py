"""What every bundle shares: its format tag, the tasks that read it, and how its ``config.json`` is read and
checked.

A bundle is untrusted data (it may come from anyone), so nothing in its config is used before it is checked
against :data:`SCHEMAS`: one declarative table per kind of bundle (required keys, types, ranges, the label count
against the head). Each problem is one line naming the file and the field. Its weights are checked against the
network built from the config in :mod:`.weights`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..backbones.text import POOLING_MODES
from ..data.images import INTERPOLATION
from ..errors import (MAX_INPUT_SIZE, MAX_LABEL_CHARS, MAX_TEXT_TOKENS, MIN_INPUT_SIZE, TransferkitError,
                      is_finite_number, is_whole_number)

BUNDLE_FORMAT = "transferkit-bundle/1"
KNOWN_FORMATS = (BUNDLE_FORMAT,)  # the format versions this transferkit reads

# image sides and token windows: transferkit.errors' MIN_INPUT_SIZE, MAX_INPUT_SIZE and MAX_TEXT_TOKENS, which fit
# and pretrain check too, so that every bundle they write is read back
MAX_CLIP_SECONDS = 600.0  # one audio window; longer recordings are cut into windows anyway
MAX_CONFIG_BYTES = 16 * 2**20  # a config.json is a few kilobytes; a bigger one is not read into memory
MAX_SIDE_FILE_BYTES = 64 * 2**20  # tokenizer.json and the like are checked as JSON up to this size
FIX = "re-export the bundle or fix the file"

# the tasks that read bundles, in registration order (transferkit.tasks.register_task adds each): a bundle names
# its task in config.json, and the task knows its inputs and extra files; bundles never import tasks
READERS: list[Any] = []


def register_reader(task: Any) -> None:
    """Let ``task`` read the bundles it matches (``task.matches_bundle(config)``); a task of the same name is
    replaced."""
    READERS[:] = [t for t in READERS if t.name != task.name] + [task]


def unregister_reader(name: str) -> None:
    """Forget the task called ``name`` as a bundle reader."""
    READERS[:] = [t for t in READERS if t.name != name]


def reader_for(config: dict[str, Any]) -> Any:
    """The registered task that reads a bundle with this ``config.json``; one clear line when none does."""
    for task in READERS:
        if task.matches_bundle(config):
            return task
    raise TransferkitError(f"No task reads bundles of kind {config.get('task')!r} (known: {_known_tasks()}): load it "
                           "with the transferkit version that saved it, or register the task that saved it.")


def _known_tasks() -> str:
    return ", ".join(sorted({t.bundle_task for t in READERS})) or "none registered: import transferkit.tasks"


def reader_named(name: str) -> Any:
    """The registered task called ``name`` (``TransferModel`` made without one takes its modality's)."""
    for task in READERS:
        if task.name == name:
            return task
    raise TransferkitError(f"No task {name!r} is registered: import transferkit.tasks (transferkit.load does).")


# -- the schema ------------------------------------------------------------------------------------------------
# A check takes a field's value and the whole config and returns None when it is fine, else what was found
# ("a string", "[4096, 4096]"), which the message sets against what the field must be.
Check = Callable[[Any, dict[str, Any]], "str | None"]


@dataclass(frozen=True)
class Rule:
    """One field of ``config.json``: its dotted path, what it must be (for the message), and its check."""

    field: str
    must: str
    check: Check
    optional: bool = False  # may be absent (an older bundle, or a setting with a default)
    hint: str = FIX


def _shown(v: Any, value: bool = False) -> str:
    """How a wrong value is named in a message: its JSON type where the type is wrong (``value`` False: "a string"
    for labels given as "a,b,c"), else the value itself, shortened."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, str):
        return (repr(v) if len(v) <= 40 else repr(v[:37]) + "...") if value else "a string"
    if v is None:
        return "null"
    if isinstance(v, dict):
        return "an object"
    text = json.dumps(v, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _got(ok: bool, v: Any, value: bool = False) -> str | None:
    return None if ok else f"got {_shown(v, value)}"


def whole(lo: int, hi: int, nullable: bool = False) -> tuple[str, Check]:
    what = f"a whole number from {lo} to {hi}" + (" or null" if nullable else "")
    return what, lambda v, _: _got((nullable and v is None) or (is_whole_number(v) and lo <= v <= hi), v)


def number(lo: float, hi: float, low_open: bool = False, nullable: bool = False) -> tuple[str, Check]:
    what = (f"a number above {lo:g} and up to {hi:g}" if low_open else f"a number from {lo:g} to {hi:g}") + (
        " or null" if nullable else "")

    def check(v: Any, _: dict) -> str | None:
        ok = is_finite_number(v) and (lo < v if low_open else lo <= v) and v <= hi
        return _got((nullable and v is None) or ok, v)

    return what, check


def thresholds() -> tuple[str, Check]:
    """A multi-label model's cut: one number for every label, or a list of one per label."""
    def one(x: Any) -> bool:
        return is_finite_number(x) and 0 <= x <= 1

    def check(v: Any, config: dict) -> str | None:
        labels = config.get("labels")
        return _got(one(v) or (config.get("multi_label") is True and isinstance(v, list) and isinstance(labels, list)
                               and len(v) == len(labels) and all(one(x) for x in v)), v)

    return "a number from 0 to 1, or (multi-label) a list of one such number per label", check


def text(empty: bool = False) -> tuple[str, Check]:
    return ("a string" if empty else "a non-empty string"), lambda v, _: _got(
        isinstance(v, str) and (empty or bool(v.strip())), v)


def paths() -> tuple[str, Check]:
    """A list of file paths, as many as a bundle records (``Task.recorded_files``: 5,000 test files at most)."""
    return f"a list of up to {MAX_RECORDED:,} file paths", lambda v, _: _got(
        isinstance(v, list) and len(v) <= MAX_RECORDED and all(isinstance(e, str) for e in v), v)


def flag() -> tuple[str, Check]:
    return "true or false", lambda v, _: _got(isinstance(v, bool), v)


def one_of(*choices: Any) -> tuple[str, Check]:
    return "one of " + ", ".join(map(str, choices)), lambda v, _: _got(
        isinstance(v, (str, int)) and not isinstance(v, bool) and v in choices, v, value=True)


def mapping(keys: tuple[str, ...] | None = None) -> tuple[str, Check]:
    """A JSON object; with ``keys``, holding no other keys than these."""

    def check(v: Any, _: dict) -> str | None:
        if not isinstance(v, dict):
            return f"got {_shown(v)}"
        extra = sorted(set(v) - set(keys)) if keys is not None else []
        return f"got the key {extra[0]!r}" if extra else None

    return ("an object" + (f" with keys among {', '.join(keys)}" if keys else "")), check


def numbers(n: int, lo: float, hi: float, low_open: bool = False) -> tuple[str, Check]:
    what = f"a list of {n} numbers " + (f"above {lo:g} and up to {hi:g}" if low_open else f"from {lo:g} to {hi:g}")
    return what, lambda v, _: _got(isinstance(v, list) and len(v) == n and all(
        is_finite_number(x) and (lo < x if low_open else lo <= x) and x <= hi for x in v), v)


def image_size() -> tuple[str, Check]:
    what = f"a pair of whole numbers from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE} (pixels)"
    return what, lambda v, _: _got(isinstance(v, list) and len(v) == 2 and all(
        is_whole_number(x) and MIN_INPUT_SIZE <= x <= MAX_INPUT_SIZE for x in v), v)


def class_names() -> tuple[str, Check]:
    def check(v: Any, _: dict) -> str | None:
        if not isinstance(v, list) or not v:
            return f"got {_shown(v)}"
        seen: set[str] = set()
        for i, x in enumerate(v):
            if not isinstance(x, str) or not x.strip():
                return f"got {_shown(x, value=True)} at position {i}"
            if len(x) > MAX_LABEL_CHARS:
                return f"got a name of {len(x):,} characters at position {i}"
            if any(c in x for c in CONTROL):
                return f"got a name with a line break or another control character at position {i}"
            if x in seen:
                return f"got {x!r} twice"
            seen.add(x)
        return None

    return f"a list of distinct, non-empty class names on one line, up to {MAX_LABEL_CHARS} characters", check


def count_of(field: str) -> tuple[str, Check]:
    """A whole number equal to the length of the list at ``field`` (a head's classes against the labels)."""

    def check(v: Any, config: dict) -> str | None:
        n = len(config.get(field) or [])
        return None if is_whole_number(v) and v == n else f"got {_shown(v)} for {n} {field}"

    return f"the number of {field}", check


def class_weights() -> tuple[str, Check]:
    def check(v: Any, config: dict) -> str | None:
        n = len(config.get("labels") or [])
        ok = v is None or (isinstance(v, list) and len(v) == n and all(is_finite_number(x) and 0 < x <= 1e6 for x in v))
        return _got(ok, v)

    return "null or one number above 0 (and up to a million) per label", check


def known_label() -> tuple[str, Check]:
    return "null or one of the labels", lambda v, config: _got(
        v is None or (isinstance(v, str) and v in (config.get("labels") or [])), v, value=True)


def window() -> tuple[str, Check]:
    def check(v: Any, _: dict) -> str | None:
        from ..data.medical import check_window

        try:
            check_window(v) if isinstance(v, str) else None
        except TransferkitError:
            return f"got {_shown(v, value=True)}"
        return _got(isinstance(v, str), v)

    return "auto, full, a CT preset or 'centre,width'", check


MAX_RECORDED = 5000  # test files a bundle records for export to check itself on (Task.recorded_files)
MAX_LINEAGE = 100  # bundles a lineage names: a chain of further fine-tuning rounds, not a log
CONTROL = {chr(c) for c in range(32)} | {"\x7f"}


COMMON = (
    Rule("format", *one_of(*KNOWN_FORMATS), hint="load it with the transferkit version that saved it"),
    Rule("transferkit_version", *text(), optional=True),
    Rule("task", *text()),
    Rule("labels", *class_names()),
    Rule("multi_label", *flag(), optional=True),
    Rule("threshold", *thresholds(), optional=True),
    Rule("tta", *flag(), optional=True),
    Rule("backbone", *mapping(("name", "source", "arch", "weights", "extra"))),
    Rule("backbone.name", *text()),
    Rule("backbone.source", *text()),
    Rule("backbone.arch", *text(empty=True)),  # "" where the source names the model alone (the text package)
    Rule("backbone.weights", *text(empty=True), optional=True),
    Rule("backbone.extra", *mapping(), optional=True),
    Rule("preprocess", *mapping()),
    Rule("clinical", *mapping(), optional=True),
    Rule("clinical.positive", *known_label(), optional=True),
    Rule("clinical.threshold", *number(0, 1)),
    Rule("clinical.threshold_rule", *text(), optional=True),
    Rule("clinical.temperature", *number(0, 1e3, low_open=True), optional=True),
    Rule("clinical.class_weights", *class_weights(), optional=True),
    Rule("metrics", *mapping(), optional=True),
    # the files export checks itself on and calibrates INT8 with (Task.recorded_files)
    Rule("test_files", *paths(), optional=True),
    Rule("test_labels", "one of the labels per test file", lambda v, config: _got(
        isinstance(v, list) and isinstance(config.get("test_files"), list) and len(v) == len(config["test_files"])
        and all(isinstance(e, str) and e in (config.get("labels") or []) for e in v), v), optional=True),
    Rule("calibration_files", *paths(), optional=True),
    # the bundles this one was fine-tuned further from (tasks.continued.lineage), newest first
    Rule("lineage", f"a list of up to {MAX_LINEAGE} objects",
         lambda v, _: _got(isinstance(v, list) and len(v) <= MAX_LINEAGE and all(isinstance(e, dict) for e in v), v),
         optional=True),
)
HEAD = (
    Rule("head", *mapping()),
    Rule("head.type", *one_of("linear")),
    Rule("head.in_features", *whole(1, 1_000_000)),
    Rule("head.num_classes", *count_of("labels")),
    Rule("head.dropout", *number(0, 1), optional=True),
    Rule("label_sep", "a non-empty string", lambda v, _: _got(isinstance(v, str) and v != "", v), optional=True),
)
DETECTOR = (
    Rule("detector", *mapping()),
    Rule("detector.num_classes", *count_of("labels")),
    Rule("detector.image_size", *whole(MIN_INPUT_SIZE, MAX_INPUT_SIZE)),
    Rule("detector.fpn_channels", *whole(1, 4096)),
    Rule("detector.score_thresh", *number(0, 1)),
    Rule("detector.nms_thresh", *number(0, 1)),
    Rule("detector.detections_per_img", *whole(1, 10_000)),
    Rule("detector.frozen_bn", *flag(), optional=True),
)
IMAGE = (
    Rule("preprocess.input_size", *image_size()),
    Rule("preprocess.mean", *numbers(3, -1000, 1000)),  # of pixels scaled to [0, 1]: a few tenths
    Rule("preprocess.std", *numbers(3, 0, 1000, low_open=True)),
    Rule("preprocess.interpolation", *one_of(*INTERPOLATION), optional=True),
    Rule("preprocess.crop_pct", *number(0.25, 1), optional=True),
    Rule("preprocess.window", *window(), optional=True),
    Rule("preprocess.slices", *one_of("2d", "2.5d"), optional=True),
    Rule("preprocess.resize", *one_of("crop", "pad"), optional=True),
)
TEXT = (
    Rule("preprocess.max_length", *whole(1, MAX_TEXT_TOKENS)),
    Rule("preprocess.pooling", *one_of(*POOLING_MODES), optional=True),
    Rule("preprocess.normalize", *flag(), optional=True),
)
AUDIO = (
    Rule("preprocess.kind", *one_of("spectrogram", "speaker", "hf")),
    Rule("preprocess.sample_rate", *whole(1000, 384_000)),
    Rule("preprocess.clip_seconds", *number(0, MAX_CLIP_SECONDS, low_open=True)),
    Rule("preprocess.n_fft", *whole(8, 65_536), optional=True),
    Rule("preprocess.hop_length", *whole(1, 65_536), optional=True),
    Rule("preprocess.n_mels", *whole(1, 1024), optional=True),
    Rule("preprocess.fmin", *number(0, 192_000), optional=True),
    Rule("preprocess.fmax", *number(0, 192_000, low_open=True, nullable=True), optional=True),
    Rule("preprocess.log", *flag(), optional=True),
    Rule("preprocess.top_db", *number(0, 1000, low_open=True), optional=True),
    Rule("preprocess.mean", *number(-1e6, 1e6), optional=True),
    Rule("preprocess.std", *number(0, 1e6, low_open=True), optional=True),
    Rule("preprocess.image_height", *whole(MIN_INPUT_SIZE, MAX_INPUT_SIZE, nullable=True), optional=True),
    Rule("preprocess.image_width", *whole(MIN_INPUT_SIZE, MAX_INPUT_SIZE, nullable=True), optional=True),
    Rule("preprocess.target_dbfs", *number(-200, 0, nullable=True), optional=True),
    Rule("preprocess.trim_db", *number(0, 200, low_open=True, nullable=True), optional=True),
)
# what config.json holds per kind of bundle (its "task"); a kind registered from outside gets COMMON + HEAD
SCHEMAS: dict[str, tuple[Rule, ...]] = {
    "image-classification": COMMON + HEAD + IMAGE,
    "text-classification": COMMON + HEAD + TEXT,
    "audio-classification": COMMON + HEAD + AUDIO,
    "object-detection": COMMON + DETECTOR + IMAGE,
}


def _lookup(config: dict[str, Any], field: str) -> tuple[bool, Any]:
    value: Any = config
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value


def check_config(config: dict[str, Any], where: str | Path = "config.json") -> None:
    """Check a bundle's ``config.json`` against :data:`SCHEMAS` (the rules for its ``task``), in table order.

    Args:
        config: the parsed ``config.json``.
        where: the file, for the message.

    Raises:
        TransferkitError: the first field that is missing or wrong, named with the file, e.g. ``model/config.json:
            labels must be a list of distinct, non-empty class names, got a string; re-export the bundle or fix
            the file``.
    """
    rules = SCHEMAS.get(config.get("task"), COMMON + HEAD) if isinstance(config.get("task"), str) else COMMON
    for rule in rules:
        present, value = _lookup(config, rule.field)
        if not present:
            parent = rule.field.rpartition(".")[0]
            if rule.optional or (parent and not _lookup(config, parent)[0]):
                continue  # an optional section that is absent takes its fields with it
            raise TransferkitError(f"{where}: {rule.field} is missing; {rule.hint}.")
        problem = rule.check(value, config)
        if problem is not None:
            raise TransferkitError(f"{where}: {rule.field} must be {rule.must}, {problem}; {rule.hint}.")
    kind = config["task"]
    if READERS and not any(t.bundle_task == kind for t in READERS):
        raise TransferkitError(f"{where}: task {kind!r} is not a kind of bundle this transferkit reads (known: "
                               f"{_known_tasks()}); load it with the transferkit version that saved it, or register "
                               "the task that saved it.")


CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".so", ".pyd")  # a bundle is data: none of these belong in one


def read_config(folder: str | Path) -> dict[str, Any]:
    """A bundle's ``config.json``, checked (:func:`check_config`): both files present, JSON intact, this format,
    every field the bundle's kind needs of the right type and range; and every other JSON file of the bundle
    (``encoder/config.json``, ``tokenizer/``...) intact.

    Raises:
        TransferkitError: one line naming the file (and field) at fault.
    """
    folder = Path(folder)
    cfg_path, w_path = folder / "config.json", folder / "model.safetensors"
    if not folder.is_dir():
        raise TransferkitError(f"{folder} is not a transferkit bundle (no such folder): pass the run's model/ folder.")
    for path in (cfg_path, w_path):
        if path.is_dir():
            raise TransferkitError(f"{path} is a folder, not a file: {FIX}.")
        if not path.is_file():
            raise TransferkitError(f"{folder} is not a transferkit bundle (needs config.json and model.safetensors, "
                                   f"{path.name} is missing): pass the run's model/ folder.")
    if cfg_path.stat().st_size > MAX_CONFIG_BYTES:
        raise TransferkitError(f"{cfg_path} is {cfg_path.stat().st_size / 2**20:.0f} MB, far more than a bundle's "
                               f"config holds (at most {MAX_CONFIG_BYTES // 2**20} MB): {FIX}.")
    code = sorted(p for p in folder.rglob("*") if p.suffix.lower() in CODE_SUFFIXES)
    if code:  # nothing here would import it, but a bundle holding code is not one transferkit saved
        kind = "Python code" if code[0].suffix.lower() in (".py", ".pyc", ".pyo") else "native code"
        raise TransferkitError(f"{code[0]} is {kind} inside a bundle: transferkit never runs it; remove it (a "
                               "bundle holds only JSON, tokenizer files and safetensors).")
    config = _json_object(cfg_path)
    check_config(config, cfg_path)
    for path in sorted(folder.rglob("*.json")):  # the encoder's and tokenizer's configs: named here, not deep inside
        if path != cfg_path and path.is_file() and path.stat().st_size <= MAX_SIDE_FILE_BYTES:
            _json_object(path)
    return config


def _json_object(path: Path) -> Any:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise TransferkitError(f"{path} is not UTF-8 text (byte {err.object[err.start]:#04x} at position "
                               f"{err.start}): {FIX}.") from None
    except (json.JSONDecodeError, RecursionError) as err:
        detail = f"{err.msg} at line {err.lineno}" if isinstance(err, json.JSONDecodeError) else "nested too deeply"
        raise TransferkitError(f"{path} is damaged ({detail}): {FIX}.") from None
    if not isinstance(value, dict):
        raise TransferkitError(f"{path} must hold a JSON object, got {_shown(value)}: {FIX}.")
    return value
