"""Where labelled images (and audio files) come from: a folder per class, a CSV/TSV/JSONL of ``path,label``, or
arrays in memory.

Everything ends up as :class:`ImageSet` / :class:`AudioSet` (items + string labels) grouped in :class:`Splits`. Existing
``train/``, ``val/`` and ``test/`` folders (or a ``split`` column) are honoured; otherwise a seeded,
stratified split is made.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..errors import DataError
from .labels import (check_label_kinds, is_missing, is_multi, label_counts, label_names, missing_label, parse_label,
                     rarest_labels)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
PATH_COLUMNS = ("path", "image", "audio", "file", "filename", "filepath")  # a table of files, not of texts
# a column of patient (subject, case) ids: splits then keep each patient's images together
PATIENT_COLUMNS = ("patient_id", "patient", "patientid", "subject_id", "subject", "case_id")
MEDICAL_COLUMNS = ("patient_id", "patient", "patientid")  # unambiguous: such a column switches the medical mode on
SPLIT_DIRS = {"train": ("train", "training"), "val": ("val", "valid", "validation", "dev"), "test": ("test", "testing")}
Item = Union[Path, np.ndarray]


@dataclass
class ImageSet:
    """Images (file paths or HxW[xC] uint8 arrays) and their labels, in matching order: a class name each, or with
    ``multi_label`` a sorted tuple of class names each (none, one or several).

    ``groups`` (optional): each image's patient, as :func:`~transferkit.data.medical.patient_key` hashes; splits
    then never put one patient's images in two splits."""

    items: list[Item]
    labels: list[Any]
    origin: str = ""
    groups: list[str] | None = field(default=None, kw_only=True)
    multi_label: bool = field(default=False, kw_only=True)

    def __post_init__(self) -> None:
        if not self.multi_label and any(isinstance(y, (list, tuple)) for y in self.labels):
            # a list of labels per image (the Python API): multi-label, each a sorted tuple as tables give them
            self.multi_label = True
        if self.multi_label:
            self.labels = [y if isinstance(y, tuple) and all(isinstance(v, str) for v in y)
                           else parse_label(y, True, None, f"label #{i}") for i, y in enumerate(self.labels)]

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, idx: list[int]) -> ImageSet:
        groups = [self.groups[i] for i in idx] if self.groups is not None else None
        return type(self)([self.items[i] for i in idx], [self.labels[i] for i in idx], self.origin, groups=groups,
                          multi_label=self.multi_label, **self.extra_fields(self))

    def label_names(self) -> list[str]:
        return label_names(self.labels, self.multi_label)

    def counts(self) -> dict[str, int]:
        return label_counts(self.labels, self.multi_label)

    def strata(self) -> list[str]:
        """One label per example for stratified splitting (multi-label: its rarest label)."""
        return rarest_labels(self.labels) if self.multi_label else list(self.labels)

    def joined(self, other: ImageSet) -> ImageSet:
        """These examples followed by ``other``'s (replay); patients stay apart (``other``'s without a patient each
        count as their own)."""
        if other.multi_label != self.multi_label:
            kinds = ("single-label", "multi-label")
            raise DataError(f"The replayed examples are {kinds[other.multi_label]}, the new ones "
                            f"{kinds[self.multi_label]}: replay the bundle's own training data.")
        groups = None
        if self.groups is not None or other.groups is not None:
            groups = [*(self.groups or [f"new #{i}" for i in range(len(self))]),
                      *(other.groups or [f"replayed #{i}" for i in range(len(other))])]
        return type(self)(self.items + other.items, self.labels + other.labels, self.origin, groups=groups,
                          multi_label=self.multi_label, **self.extra_fields(other))

    def extra_fields(self, other: ImageSet) -> dict[str, Any]:
        return {}


@dataclass
class AudioSet(ImageSet):
    """Audio files (or 1-D float arrays recorded at ``sample_rate`` Hz) and their labels."""

    sample_rate: int | None = None

    def extra_fields(self, other: ImageSet) -> dict[str, Any]:
        rate = getattr(other, "sample_rate", None)
        if self.sample_rate is not None and rate is not None and rate != self.sample_rate:
            raise DataError(f"Replayed recordings are arrays at {rate} Hz, the new ones at {self.sample_rate} Hz: give "
                            "both at one sample rate.")
        return {"sample_rate": self.sample_rate or rate}


# what each kind of file-based data accepts, and how its class is built
KINDS = {"image": (IMAGE_SUFFIXES, ImageSet), "audio": (None, AudioSet)}


def _kind(kind: str) -> tuple[set[str], type]:
    suffixes, cls = KINDS[kind]
    if suffixes is None:
        from .audio import AUDIO_SUFFIXES

        suffixes = AUDIO_SUFFIXES
    return suffixes, cls


# Below this many examples in the smallest class (patients, for patient-grouped data), no split is held out by
# default: settings are chosen by cross-validation on every label, the score is a cross-validated estimate, and
# the final model trains on all of them. With 10 labels a class, a 20% test and 15% validation split would leave
# 6 to train on and score the model on 2 examples a class; from about 50 a class, a held-out split of 10 or more
# a class starts to give a usable score of its own.
SMALL_DATA_PER_CLASS = 50
MAX_LABELS = 2000  # distinct labels of a multi-label set: more is a free-text column or a wrong separator
DEFAULT_VAL_FRACTION = 0.15
DEFAULT_TEST_FRACTION = 0.2


@dataclass
class Splits:
    """``val`` is None when the run cross-validates instead (small data, see :data:`SMALL_DATA_PER_CLASS`)."""

    train: ImageSet
    val: ImageSet | None
    test: ImageSet | None = None
    classes: list[str] = field(default_factory=list)
    how: str = ""  # "folders", "column" or "stratified seed=N"

    @property
    def cross_validated(self) -> bool:
        return self.val is None

    def summary(self) -> dict[str, object]:
        out: dict[str, object] = {"classes": self.classes, "split": self.how, "train": len(self.train),
                                  "val": len(self.val) if self.val is not None else 0,
                                  "cross_validated": self.val is None}
        out["test"] = len(self.test) if self.test is not None else 0
        out["train_per_class"] = self.train.counts()
        if getattr(self.train, "groups", None) is not None:
            parts = {"train": self.train, "val": self.val, "test": self.test}
            out["patients"] = {k: len(set(v.groups or [])) for k, v in parts.items() if v is not None}
        return out


def load_splits(
    source: str | Path | ImageSet | Splits,
    *,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
    seed: int = 0,
    skip_bad: bool = False,
    kind: str = "image",
    patients: bool = False,
    patient_column: str | None = None,
    known: Sequence[str] = (),
    label_sep: str | None = None,
) -> Splits:
    """Read a data source and return train/val(/test) splits.

    ``source`` is a folder (folder-per-class, optionally inside ``train/``, ``val/``, ``test/``), a ``.csv``,
    ``.tsv`` or ``.jsonl`` file with ``path`` and ``label`` columns (optional ``split`` and ``patient_id``
    columns), an :class:`ImageSet` / :class:`AudioSet`, or ready :class:`Splits`. ``kind`` ("image" or "audio")
    says which files class folders may hold. Given splits are always kept; for the missing ones see
    :func:`carve_splits` (``None`` fractions: held out only when the data are not small).

    Patient-level splits: a patient column (``patient_column``, or one of :data:`PATIENT_COLUMNS`), or with
    ``patients=True`` the DICOM files' ``PatientID``, groups the images by patient (hashed at once). No patient is
    then split across train/val/test, and given splits that share a patient are refused, naming the patients.
    ``known``: classes a model already has (a run from a bundle): the training split may then hold a single class,
    and the other splits classes it lacks.

    Multi-label: a table whose label cells are JSON lists, or split on ``label_sep`` (e.g. ``"|"``), or an
    :class:`ImageSet` whose labels are lists. Splits are then carved by iterative stratification (every label in
    training, each label spread over the splits in proportion; :func:`~transferkit.data.folds.iterative_parts`).

    Raises :class:`DataError` with one line naming the culprit.
    """
    if isinstance(source, Splits):
        check_patient_leaks({"train": source.train, "val": source.val, "test": source.test})
        return source
    if isinstance(source, ImageSet):
        wheres = [f"label #{i} of the {type(source).__name__}" for i in range(len(source.labels))]
        check_label_kinds(source.labels, wheres, "labels")
        for where, y in zip(wheres, source.labels, strict=True):
            if is_missing(y):
                raise missing_label(where, "labels", y, skip_hint=False)
        if label_sep is not None and not source.multi_label:  # "a|b" strings in memory: split them as a table's
            source = source.subset(range(len(source)))
            source.labels = [parse_label(y, True, label_sep, f"label #{i}") for i, y in enumerate(source.labels)]
            source.multi_label = True
        return _split(source, {}, val_fraction, test_fraction, seed, known)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"Data path {path} does not exist: pass a folder of class folders or a CSV/JSONL file.")
    if path.is_file():
        ds, given = read_table(path, skip_bad=skip_bad, kind=kind, patient_column=patient_column, patients=patients,
                               label_sep=label_sep)
        if patients and ds.groups is None:
            attach_dicom_patients([ds, *given.values()], path)
        return _split(ds, given, val_fraction, test_fraction, seed, known)
    if patient_column is not None:
        raise DataError(f"patient_column applies to a CSV/TSV/JSONL manifest; {path} is a folder (DICOM folders give "
                        "their PatientID instead).")
    if label_sep is not None:
        raise DataError(f"label_sep splits the label cells of a table; {path} is a folder of class folders, which "
                        "gives one label per file: for several labels per file, pass a CSV/JSONL of path,label.")
    split_dirs = {k: d for k, names in SPLIT_DIRS.items() for n in names if (d := path / n).is_dir()}
    if "train" in split_dirs:
        given = {k: read_class_folders(d, skip_bad=skip_bad, kind=kind) for k, d in split_dirs.items()}
    else:
        given = {"train": read_class_folders(path, skip_bad=skip_bad, kind=kind)}
    if patients:
        attach_dicom_patients(list(given.values()), path)
    return _split(given.pop("train"), given, val_fraction, test_fraction, seed, known)


def attach_dicom_patients(parts: list[ImageSet], origin: object) -> None:
    """Group DICOM images by their hashed ``PatientID`` (read from the header, no pixels). Files without one
    (PNG, NIfTI, anonymised DICOM) each count as their own patient, with one warning saying how many."""
    from .medical import dicom_patient, is_dicom

    missing = 0
    found: list[list[str]] = []
    for p, part in enumerate(parts):
        groups: list[str] = []
        for i, item in enumerate(part.items):
            key = dicom_patient(Path(item)) if isinstance(item, Path) and is_dicom(Path(item)) else None
            if key is None:
                missing += 1
                key = f"unknown-{p}-{i}"  # its own patient
            groups.append(key)
        found.append(groups)
    total = sum(len(g) for g in found)
    if missing < total:
        for part, groups in zip(parts, found, strict=True):
            part.groups = groups
    if total and missing == total:
        from ..console import warn

        warn(f"{origin}: no patient ids (no patient_id column, no DICOM PatientID): images are split one by one, so "
             "a patient with several images can land in two splits; give a manifest with a patient_id column")
    elif missing:
        from ..console import warn

        warn(f"{missing} of {total} image(s) in {origin} have no PatientID: each is treated as its own patient")


def read_class_folders(root: Path, skip_bad: bool = False, kind: str = "image") -> ImageSet:
    """Folder-per-class: ``root/<label>/<file>``. Hidden files are ignored; files of another kind are errors.
    Image folders may hold DICOM (also without a suffix) and NIfTI files."""
    suffixes, cls = _kind(kind)
    if kind == "image":
        from .medical import is_medical
    else:
        is_medical = None
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class folders: put {kind} files in {root}/<label>/, or pass a "
                        "CSV of path,label.")
    items: list[Item] = []
    labels: list[str] = []
    skipped = 0
    for d in classes:
        files = sorted(f for f in d.rglob("*")
                       if (f.is_file() or f.is_symlink() and not f.exists())  # a dangling link is a bad file too
                       and not any(p.startswith(".") for p in f.relative_to(d).parts))
        n_before = len(items)
        for f in files:
            if not f.exists():
                if skip_bad:
                    skipped += 1
                    continue
                raise DataError(f"{f} is a symbolic link to nothing (or a loop of links): fix or remove it, or pass "
                                "--skip-bad to skip such files.")
            if f.suffix.lower() not in suffixes and not (is_medical and is_medical(f)):
                if is_medical and _sidecar(f):
                    continue  # dcm2niix/BIDS metadata beside its volume
                if skip_bad:
                    skipped += 1
                    continue
                article = "an" if kind[0] in "aeiou" else "a"
                raise DataError(f"{f} is not {article} {kind} file ({f.suffix or 'no extension'}): remove it, or pass "
                                "--skip-bad to skip such files.")
            items.append(f)
            labels.append(d.name)
        if len(items) == n_before:
            raise DataError(f"Class folder {d} has no {kind} files: add some or remove the folder.")
    if skipped:
        from ..console import warn

        warn(f"skipped {skipped} non-{kind} file(s) or dangling link(s) under {root}")
    return cls(items, labels, str(root))


def _sidecar(f: Path) -> bool:
    """A ``.json`` beside a NIfTI volume of the same name (what dcm2niix and BIDS write)."""
    if f.suffix.lower() != ".json":
        return False
    return any((f.parent / (f.stem + s)).is_file() for s in (".nii", ".nii.gz"))


def read_table(path: Path, skip_bad: bool = False, kind: str = "image", patient_column: str | None = None,
               patients: bool = False, labelled: bool = True,
               label_sep: str | None = None) -> tuple[ImageSet, dict[str, ImageSet]]:
    """A CSV/TSV (header row) or JSONL file with ``path`` and ``label`` (optional ``split``: train/val/test). With
    ``patients`` (medical runs), a patient column (``patient_column`` or one of :data:`PATIENT_COLUMNS`) groups the
    rows, hashed as it is read. ``labelled=False`` (unlabelled pre-training) needs only the path column; labels
    are then empty strings where the table has none.

    Multi-label when ``label_sep`` is given (``"cat|dog"`` cells) or a JSONL label is a list: each label is then a
    sorted tuple of class names. An explicit empty list (``[]``) says no label applies; an empty cell is refused
    as in single-label tables."""
    _, cls = _kind(kind)
    rows = read_rows(path)
    if not rows:
        raise DataError(f"{path} has no rows: add one row per {kind} file with path and label.")
    from .copies import warn_repeated_rows

    warn_repeated_rows(path, rows)
    cols = set(rows[0][1])
    path_col = next((c for c in PATH_COLUMNS if c in cols), None)
    label_col = next((c for c in ("label", "class", "target", "category") if c in cols), None)
    if path_col is None or (label_col is None and labelled):
        raise DataError(f"{path} needs a 'path' and a 'label' column; it has {sorted(cols)}."
                        if labelled else f"{path} needs a 'path' column naming the {kind} files; it has "
                                         f"{sorted(cols)}.")
    if patient_column is not None and patient_column.lower() not in cols:
        raise DataError(f"{path} has no column {patient_column!r} for patient ids; it has {sorted(cols)}.")
    patient_col = patient_column.lower() if patient_column else next((c for c in PATIENT_COLUMNS if c in cols), None)
    patient_col = patient_col if patients else None
    if patient_col is not None:
        from .medical import patient_key
    if labelled:
        check_label_kinds([row.get(label_col) for _, row in rows], [f"{path} line {line}" for line, _ in rows],
                          label_col)
    multi = labelled and is_multi([row.get(label_col) for _, row in rows], label_sep)
    by_split: dict[str, ImageSet] = defaultdict(lambda: _empty(cls, path, patient_col, multi))
    skipped = 0
    for line, row in rows:
        img = Path(str(row.get(path_col, "") or "").strip())
        if labelled and is_missing(row.get(label_col)):
            raise missing_label(f"{path} line {line}", label_col, row.get(label_col), skip_hint=False)
        label = parse_label(row.get(label_col), multi, label_sep, f"{path} line {line}") if label_col and labelled \
            else ""
        label = "" if label is None else label  # unlabelled pre-training data
        if not str(img) or str(img) == ".":
            raise DataError(f"{path} line {line}: empty {path_col!r}: fill it in or remove the row.")
        full = img if img.is_absolute() else path.parent / img
        if not full.is_file():
            if skip_bad:
                skipped += 1
                continue
            raise DataError(f"{path} line {line}: {kind} file {full} does not exist: fix the path or remove the row "
                            "(or pass --skip-bad).")
        split = str(row.get("split", "train") or "train").strip().lower()
        split = next((k for k, names in SPLIT_DIRS.items() if split in names), None) or _bad_split(path, line, split)
        by_split[split].items.append(full)
        by_split[split].labels.append(label)
        if patient_col is not None:
            patient = str(row.get(patient_col, "") or "").strip()
            if not patient:
                raise DataError(f"{path} line {line}: empty {patient_col!r}: give every row its patient id.")
            by_split[split].groups.append(patient_key(patient))
    if skipped:
        from ..console import warn

        warn(f"skipped {skipped} row(s) of {path} whose {kind} file is missing")
    train = by_split.pop("train", _empty(cls, path, patient_col, multi))
    if not len(train):
        raise DataError(f"{path} has no training rows: give rows with split=train (or no split column).")
    return train, dict(by_split)


def _empty(cls: type, path: Path, patient_col: str | None, multi: bool = False) -> ImageSet:
    ds = cls([], [], str(path), multi_label=multi)
    ds.groups = [] if patient_col else None
    return ds


def _bad_split(path: Path, line: int, value: str) -> str:
    raise DataError(f"{path} line {line}: split {value!r} is not train, val or test.")


def table_columns(path: Path) -> set[str]:
    """The column names of a CSV/TSV header or of a JSONL file's first record, reading nothing more."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            if path.suffix.lower() in (".jsonl", ".ndjson"):
                first = next((line for line in f if line.strip()), "{}")
                record = json.loads(first)
                return {str(k).lower() for k in record} if isinstance(record, dict) else set()
            header = next(csv.reader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ","), [])
            return {h.strip().lower() for h in header if h.strip()}
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as err:
        raise DataError(f"{path} does not start with a readable header ({type(err).__name__}).") from None


def read_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    """A CSV/TSV/JSONL table's rows as ``(line number, {column: value})``; one clear line for an unreadable one."""
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at position {err.start}): "
                        "save it as UTF-8.") from None
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((i, json.loads(line)))
                except json.JSONDecodeError as err:
                    raise DataError(f"{path} line {i} is not valid JSON ({err.msg}): fix or remove it.") from None
        return rows
    if suffix in (".csv", ".tsv", ".txt"):
        delim = "\t" if suffix == ".tsv" else ","
        # newline="" keeps line breaks inside quoted cells (multi-line texts); line_num counts them
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delim)
        return [(reader.line_num, {k.strip().lower(): v for k, v in r.items() if k}) for r in reader]
    raise DataError(f"{path}: unsupported table type {suffix!r}; use .csv, .tsv or .jsonl.")


def _split(train: ImageSet, given: dict[str, ImageSet], val_fraction: float | None, test_fraction: float | None,
           seed: int, known: Sequence[str] = ()) -> Splits:
    classes = train.label_names()
    if train.multi_label and not classes and not known:
        raise DataError(f"Every training example of {train.origin or 'the data'} has an empty label list: a "
                        "multi-label classifier needs examples that carry labels.")
    if len(set(classes) | set(known)) < 2:
        only = classes[0] if classes else "none"
        raise DataError(f"Only one class ({only}) in {train.origin or 'the data'}: a classifier needs examples of at "
                        "least two classes.")
    for name, ds in given.items():
        unknown = sorted(set(ds.label_names()) - set(classes) - set(known))
        if unknown:
            raise DataError(f"The {name} split has labels not seen in training ({', '.join(unknown[:5])}): add "
                            "training examples for them.")
    check_patient_leaks({"train": train, **given})
    return carve_splits(train, given, classes, train.strata(), val_fraction, test_fraction, seed)


def check_patient_leaks(parts: dict[str, ImageSet | None]) -> None:
    """Refuse splits that share a patient, naming the patients (hashed) and one file of each split."""
    seen: dict[str, dict[str, Item]] = defaultdict(dict)
    for name, ds in parts.items():
        if ds is None or getattr(ds, "groups", None) is None:
            continue
        for g, item in zip(ds.groups, ds.items, strict=True):
            seen[g].setdefault(name, item)
    leaks = {g: where for g, where in seen.items() if len(where) > 1}
    if not leaks:
        return
    first, where = next(iter(sorted(leaks.items())))
    shown = " and ".join(f"{k} ({v if not hasattr(v, 'shape') else 'an array'})" for k, v in where.items())
    others = ", ".join(sorted(leaks)[:10])
    raise DataError(f"{len(leaks)} patient(s) appear in more than one split, so test scores would be inflated: "
                    f"patient #{first} in {shown}; all: {others}{' ...' if len(leaks) > 10 else ''} (ids hashed with "
                    "transferkit.data.medical.patient_key). Keep each patient's images in one split.")


def smallest_class(strata: list[Any], groups: list[str] | None = None) -> int:
    """Examples (or distinct groups, e.g. patients) in the smallest class; a tuple entry is a multi-label example's
    labels, each counting it (an example without labels counts for none)."""
    units: dict[str, set] = defaultdict(set)
    for i, ys in enumerate(strata):
        for y in ys if isinstance(ys, tuple) else (ys,):
            units[y].add(groups[i] if groups is not None else i)
    return min((len(u) for u in units.values()), default=0)


def carve_splits(train, given: dict, classes: list[str], strata: list[str], val_fraction: float | None,
                 test_fraction: float | None, seed: int) -> Splits:
    """Keep the given val/test sets; carve the missing ones out of ``train``, stratified by ``strata``.

    A fraction of ``None`` means the default: nothing held out when the smallest class has fewer than
    :data:`SMALL_DATA_PER_CLASS` examples (patients), else 15% validation and 20% test. No validation split
    (``val=None``) means the run cross-validates on ``train``. A fraction of 0 holds nothing out.

    A class with a single example stays in training (with a warning): it cannot be validated or tested. With
    patient groups, a class needs a patient for each split it is carved into, else the same warning names it.
    """
    groups = getattr(train, "groups", None)
    multi = getattr(train, "multi_label", False)
    if multi and len(classes) > MAX_LABELS:
        raise DataError(f"{len(classes):,} distinct labels in {train.origin or 'the data'}: more than a multi-label "
                        f"classifier here takes ({MAX_LABELS:,}); is the label column free text, or the separator "
                        "wrong?")
    # multi-label: the examples (patients) carrying each label, not each example's rarest label (one example without
    # labels, or a common label that is rarely the rarest, is no small class)
    small = smallest_class(train.labels if multi else strata, groups) < SMALL_DATA_PER_CLASS
    if val_fraction is None:
        val_fraction = 0.0 if small else DEFAULT_VAL_FRACTION
    if test_fraction is None:
        test_fraction = 0.0 if small else DEFAULT_TEST_FRACTION
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= frac < 1:
            raise DataError(f"{name} {frac} is out of range: use 0 (hold nothing out) up to below 1.")
    carve_val = given.get("val") is None and val_fraction > 0
    carve_test = given.get("test") is None and test_fraction > 0
    singles = [c for c, n in train.counts().items() if n == 1] if groups is None else []
    if groups is not None and (carve_val or carve_test):
        need = 1 + carve_val + carve_test
        patients: dict[str, set[str]] = defaultdict(set)
        for g, y in zip(groups, strata, strict=True):
            patients[y].add(g)
        few = {c: len(p) for c, p in sorted(patients.items()) if len(p) < need}
        if few:
            from ..console import warn

            parts = " and ".join(p for p, carved in (("validation", carve_val), ("test", carve_test)) if carved)
            warn(f"class(es) {', '.join(f'{c} ({n} patient(s))' for c, n in list(few.items())[:5])} have fewer than "
                 f"{need} patients: {parts} cannot each get one, so the threshold, calibration and scores say little "
                 "about them; add patients")
    # an id or file-name column, most likely; with a test split given, one example per class may be one-shot data
    if given.get("test") is None and len(singles) >= 10 and len(singles) * 2 > len(classes):
        raise DataError(f"{len(singles):,} of the {len(classes):,} classes have a single example (e.g. "
                        f"{', '.join(singles[:3])}): these labels look like names or ids, not classes; check the label "
                        "column (or the class folders), or give each class at least two examples.")
    if singles:
        from ..console import warn

        more = f" and {len(singles) - 5:,} more" if len(singles) > 5 else ""
        warn(f"class(es) {', '.join(singles[:5])}{more} have a single example: it is used for training only, so the "
             "scores say nothing about them; add more examples of each class")
    how = "given" if given else ""
    rest, test, val = train, given.get("test"), given.get("val")
    fractions = {name: frac for name, frac, carve in (("test", test_fraction, carve_test),
                                                      ("val", val_fraction, carve_val))
                 if carve}
    if fractions:
        if getattr(train, "multi_label", False):
            parts = multilabel_split(train.labels, fractions, seed, groups)
        else:
            parts = grouped_split(strata, groups, fractions, seed) if groups is not None else \
                stratified_split(strata, fractions, seed)
        if "val" in parts:
            val = rest.subset(parts["val"])
        if "test" in parts:
            test = rest.subset(parts["test"])
        rest = rest.subset(parts["rest"])
        kind = "patient-level stratified" if groups is not None else "stratified"
        kind = f"{kind} (iterative, multi-label)" if getattr(train, "multi_label", False) else kind
        how = f"{how + ' + ' if how else ''}{kind} seed={seed}"
    if val is None:
        rest_strata = rest.strata() if hasattr(rest, "strata") else list(rest.labels)
        unit = "patients" if groups is not None else "examples"
        smallest = smallest_class(rest.labels if multi else rest_strata, getattr(rest, "groups", None))
        cv = (f"no validation split: settings chosen by cross-validation on all {len(rest)} training examples "
              f"(smallest {'label' if multi else 'class'}: {smallest} {unit})")
        how = f"{how}; {cv}" if how else cv
    return Splits(train=rest, val=val, test=test, classes=classes, how=how or "given")


def stratified_split(labels: list[str], fractions: dict[str, float], seed: int) -> dict[str, list[int]]:
    """Per class, shuffle with ``seed`` and carve out ``fractions`` (at least one image each while the class
    keeps at least one for training). Returns index lists per part plus ``"rest"``."""
    rng = random.Random(seed)
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, y in enumerate(labels):
        by_class[y].append(i)
    out: dict[str, list[int]] = {k: [] for k in fractions} | {"rest": []}
    for y in sorted(by_class):
        idx = by_class[y][:]
        rng.shuffle(idx)
        for part, frac in fractions.items():
            n = max(1, round(frac * len(by_class[y]))) if len(idx) > 1 else 0
            out[part] += idx[:n]
            idx = idx[n:]
        out["rest"] += idx
    return {k: sorted(v) for k, v in out.items()}


def multilabel_split(label_sets: list[Any], fractions: dict[str, float], seed: int,
                     groups: list[str] | None = None) -> dict[str, list[int]]:
    """:func:`stratified_split` for multi-label examples: iterative stratification
    (:func:`~transferkit.data.folds.iterative_parts`), so each label is spread over the parts in proportion and
    every label keeps an example (a patient, with ``groups``) in training. Returns index lists per part plus
    ``"rest"``."""
    from .folds import iterative_parts

    names = list(fractions)
    shares = [1.0 - sum(fractions.values()), *(fractions[n] for n in names)]
    parts = iterative_parts(label_sets, shares, seed=seed, groups=groups)
    return {"rest": parts[0].tolist(), **{n: parts[i + 1].tolist() for i, n in enumerate(names)}}


def grouped_split(labels: list[str], groups: list[str], fractions: dict[str, float], seed: int) -> dict[str, list[int]]:
    """:func:`stratified_split` over patients instead of images: each patient goes whole into one part,
    stratified by the patient's most frequent label. Returns image index lists per part plus ``"rest"``."""
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    order = sorted(members)
    strata = [Counter(labels[i] for i in members[g]).most_common(1)[0][0] for g in order]
    parts = stratified_split(strata, fractions, seed)
    return {k: sorted(i for j in v for i in members[order[j]]) for k, v in parts.items()}


def load_test_set(source: str | Path | ImageSet, skip_bad: bool = False, kind: str = "image",
                  label_sep: str | None = None) -> ImageSet:
    """Every labelled file of ``source`` for scoring: a ``test/`` folder if the source has one, else all of it.
    ``label_sep``: as :func:`read_table` (a multi-label model's own separator)."""
    if isinstance(source, ImageSet):
        return source
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"Data path {path} does not exist: pass a folder of class folders or a CSV/JSONL file.")
    if path.is_file():
        train, given = read_table(path, skip_bad=skip_bad, kind=kind, label_sep=label_sep)
        return given.get("test") or train
    for name in SPLIT_DIRS["test"]:
        if (path / name).is_dir():
            return read_class_folders(path / name, skip_bad=skip_bad, kind=kind)
    return read_class_folders(path, skip_bad=skip_bad, kind=kind)


def detect_kind(source: object) -> str:
    """``"audio"`` when ``source`` holds audio files (an :class:`AudioSet`, class folders of mostly audio files, a
    table whose first paths are audio files); ``"medical"`` when it holds mostly DICOM/NIfTI files or is a table
    with a patient column; else ``"image"``. Reads only names (and the 4-byte DICOM marker of files without a
    suffix), never pixels."""
    from .audio import AUDIO_SUFFIXES
    from .medical import is_medical

    if isinstance(source, Splits):
        source = source.train
    if isinstance(source, AudioSet):
        return "audio"
    if isinstance(source, ImageSet):
        return "medical" if source.groups is not None else "image"
    if not isinstance(source, (str, Path)):
        return "image"
    path = Path(source).expanduser()
    files: list[Path] = []
    patient_column = False
    if path.is_dir():
        for i, f in enumerate(path.rglob("*")):
            if i > 2000:
                break
            if f.is_file() and f.parent != path and not f.name.startswith("."):
                files.append(f)
    elif path.is_file() and path.suffix.lower() in (".csv", ".tsv", ".jsonl", ".ndjson"):
        try:
            rows = read_rows(path)[:50]
        except DataError:
            return "image"
        patient_column = bool(rows) and any(c in rows[0][1] for c in MEDICAL_COLUMNS)
        for _, row in rows:
            value = Path(str(next((row[c] for c in PATH_COLUMNS if row.get(c)), "")))
            files.append(value if value.is_absolute() else path.parent / value)
    suffixes = [f.suffix.lower() for f in files]
    n_audio = sum(s in AUDIO_SUFFIXES for s in suffixes)
    n_image = sum(s in IMAGE_SUFFIXES for s in suffixes)
    n_medical = sum(is_medical(f) for f in files if f.suffix.lower() not in IMAGE_SUFFIXES | AUDIO_SUFFIXES)
    if n_audio > max(n_image, n_medical):
        return "audio"
    if n_medical > n_image or (path.is_file() and patient_column):
        return "medical"
    return "image"
