"""Where labelled texts come from, and how they become model input.

Sources: a CSV/TSV/JSONL table (text and label columns, guessed or named), a folder per class of ``.txt``
files (optionally inside ``train/ val/ test/``), a pandas DataFrame, a Hugging Face dataset (in memory or saved
with ``save_to_disk``), or Python lists (``texts`` + ``labels=``). Labels are one string per text, or several
(multi-label: lists in JSONL/DataFrame/HF data, or a ``label_sep`` such as ``"|"`` in CSV).

Everything becomes a :class:`TextSet`, split like images (given splits are kept, else seeded stratified), then
tokenised once per run by :func:`encode_texts` with the backbone's own tokenizer and max length.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..console import info, progress, warn
from ..errors import DataError
from .copies import warn_repeated_rows
from .labels import (check_label_kinds, is_multi, label_counts, label_names, label_targets, missing_label,
                     parse_label, rarest_labels)
from .sources import PATH_COLUMNS, SPLIT_DIRS, Splits, read_rows, carve_splits, table_columns

if TYPE_CHECKING:
    import torch

TEXT_COLUMNS = ("text", "sentence", "content", "body", "review", "document", "message", "utterance", "comment", "tweet")
LABEL_COLUMNS = ("label", "labels", "class", "category", "target", "intent", "topic", "sentiment", "tags")
TEXT_SUFFIXES = {".txt"}


@dataclass
class TextSet:
    """Texts and their labels in matching order; ``names`` says where each text came from (file or row)."""

    texts: list[str]
    labels: list[Any]  # str per text, or tuple[str, ...] when multi_label
    names: list[str] = field(default_factory=list)
    origin: str = ""
    multi_label: bool = False

    def __post_init__(self) -> None:
        if not self.names:
            self.names = [f"{self.origin or 'text'} #{i}" for i in range(len(self.texts))]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: list[int]) -> TextSet:
        return TextSet([self.texts[i] for i in idx], [self.labels[i] for i in idx], [self.names[i] for i in idx],
                       self.origin, self.multi_label)

    def joined(self, other: TextSet) -> TextSet:
        """These texts followed by ``other``'s (replay)."""
        if other.multi_label != self.multi_label:
            kinds = ("single-label", "multi-label")
            raise DataError(f"The replayed texts are {kinds[other.multi_label]}, the new ones "
                            f"{kinds[self.multi_label]}: replay the bundle's own training data.")
        return TextSet(self.texts + other.texts, self.labels + other.labels, self.names + other.names, self.origin,
                       self.multi_label)

    def label_names(self) -> list[str]:
        return label_names(self.labels, self.multi_label)

    def counts(self) -> dict[str, int]:
        return label_counts(self.labels, self.multi_label)

    def strata(self) -> list[str]:
        """One label per text for stratified splitting (multi-label: its rarest label)."""
        return rarest_labels(self.labels) if self.multi_label else list(self.labels)


@dataclass
class TextOptions:
    """How to read a text source (all optional)."""

    text_column: str | None = None
    label_column: str | None = None
    label_sep: str | None = None  # e.g. "|" for multi-label CSV cells such as "sport|politics"
    encoding: str = "utf-8"
    skip_bad: bool = False
    multi_label: bool | None = None  # None: decided by the data (list-valued labels, or label_sep given)


def is_text_source(source: Any, options: TextOptions | None = None) -> bool:
    """Cheap check (no heavy imports) whether ``source`` holds texts rather than images."""
    if isinstance(source, TextSet):
        return True
    if isinstance(source, Splits):
        return isinstance(source.train, TextSet)
    if isinstance(source, (list, tuple)):
        return bool(source) and all(isinstance(x, str) for x in source[:50])
    if _is_dataframe(source) or _is_hf_dataset(source):
        cols = [str(c).lower() for c in _columns(source)]
        return not any(c in PATH_COLUMNS for c in cols)
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if options and options.text_column:  # a label separator says nothing: image and audio tables take one too
            return True
        if path.is_dir():
            if _is_saved_hf_dataset(path):
                return True
            # count what the class folders hold (a README.txt beside image or audio folders does not make it text)
            from .audio import AUDIO_SUFFIXES
            from .medical import is_medical
            from .sources import IMAGE_SUFFIXES

            n_text = n_other = 0
            for i, f in enumerate(path.rglob("*")):
                if i > 2000:
                    break
                if f.is_file() and f.parent != path and not f.name.startswith("."):
                    suffix = f.suffix.lower()
                    n_text += suffix in TEXT_SUFFIXES
                    n_other += suffix in IMAGE_SUFFIXES | AUDIO_SUFFIXES or (suffix not in TEXT_SUFFIXES and
                                                                              is_medical(f))
            return n_text > n_other
        if path.is_file() and path.suffix.lower() in (".csv", ".tsv", ".jsonl", ".ndjson"):
            try:
                cols = table_columns(path)  # the header only: the file is read once, later, by its loader
            except DataError:
                return False
            return not cols & set(PATH_COLUMNS)
    return False


def load_text_splits(
    source: Any,
    *,
    labels: list[Any] | None = None,
    options: TextOptions | None = None,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
    seed: int = 0,
    known: Sequence[str] = (),
) -> Splits:
    """Read a text source into train/val(/test) :class:`~transferkit.data.sources.Splits` of :class:`TextSet`
    (``None`` fractions: held out only when the data are not small, see
    :func:`~transferkit.data.sources.carve_splits`).

    Raises :class:`DataError` with one line naming the file, row or column and what to do.
    """
    opts = options or TextOptions()
    if isinstance(source, Splits):
        return source
    given: dict[str, TextSet] = {}
    if isinstance(source, TextSet):
        train = source
    elif isinstance(source, (list, tuple)):
        if labels is None or len(labels) != len(source):
            raise DataError(f"{len(source)} texts need as many labels: pass labels=[...] of the same length.")
        train = _from_records([{"text": t, "label": y} for t, y in zip(source, labels, strict=True)], "the text list",
                              dataclasses.replace(opts, text_column="text", label_column="label"), names=None)
    elif _is_dataframe(source):
        records = source.to_dict("records")
        train, given = _records_with_splits(records, "the DataFrame", opts,
                                            [f"the DataFrame row {i}" for i in range(len(records))])
    elif _is_hf_dataset(source):
        train, given = _from_hf(source, "the dataset", opts)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(f"Data path {path} does not exist: pass a folder of class folders of .txt files, or a "
                            "CSV/TSV/JSONL file.")
        if path.is_file():
            train, given = read_text_table(path, opts)
        elif _is_saved_hf_dataset(path):
            try:
                from datasets import load_from_disk
            except ImportError:
                raise DataError(f"{path} is a saved Hugging Face dataset: run "
                                "`pip install datasets` to read it.") from None
            train, given = _from_hf(load_from_disk(str(path)), str(path), opts)
        else:
            split_dirs = {k: d for k, names in SPLIT_DIRS.items() for n in names if (d := path / n).is_dir()}
            if "train" in split_dirs:
                given = {k: read_text_folders(d, opts) for k, d in split_dirs.items()}
                train = given.pop("train")
            else:
                train = read_text_folders(path, opts)
    return split_texts(train, given, val_fraction, test_fraction, seed, known)


def load_text_eval_set(source: Any, options: TextOptions | None = None, labels: list[Any] | None = None) -> TextSet:
    """Every labelled text of ``source`` for scoring: its test split (folder ``test/``, ``split=test`` rows,
    a DatasetDict's test) when it has one, else all of it."""
    opts = options or TextOptions()
    if isinstance(source, TextSet):
        return source
    if isinstance(source, (list, tuple)):
        if labels is None or len(labels) != len(source):
            raise DataError(f"{len(source)} texts need as many labels: pass labels=[...] of the same length.")
        return _from_records([{"text": t, "label": y} for t, y in zip(source, labels, strict=True)], "the text list",
                             dataclasses.replace(opts, text_column="text", label_column="label"))
    if _is_dataframe(source):
        records = source.to_dict("records")
        train, given = _records_with_splits(records, "the DataFrame", opts,
                                            [f"the DataFrame row {i}" for i in range(len(records))])
        return given.get("test") or train
    if _is_hf_dataset(source):
        train, given = _from_hf(source, "the dataset", opts)
        return given.get("test") or train
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"Data path {path} does not exist: pass a folder of class folders of .txt files, or a "
                        "CSV/TSV/JSONL file.")
    if path.is_file():
        train, given = read_text_table(path, opts)
        return given.get("test") or train
    if _is_saved_hf_dataset(path):
        from datasets import load_from_disk

        train, given = _from_hf(load_from_disk(str(path)), str(path), opts)
        return given.get("test") or train
    for name in SPLIT_DIRS["test"]:
        if (path / name).is_dir():
            return read_text_folders(path / name, opts)
    return read_text_folders(path, opts)


def split_texts(train: TextSet, given: dict[str, TextSet], val_fraction: float | None, test_fraction: float | None,
                seed: int, known: Sequence[str] = ()) -> Splits:
    classes = train.label_names()
    if len(set(classes) | set(known)) < 2:
        raise DataError(f"Only one class ({classes[0] if classes else 'none'}) in {train.origin or 'the data'}: "
                        "a classifier needs texts of at least two classes.")
    for name, ds in given.items():
        unknown = sorted(set(ds.label_names()) - set(classes) - set(known))
        if unknown:
            raise DataError(f"The {name} split has labels not seen in training ({', '.join(unknown[:5])}): add "
                            "training texts for them.")
    return carve_splits(train, given, classes, train.strata(), val_fraction, test_fraction, seed)


def read_text_folders(root: Path, opts: TextOptions) -> TextSet:
    """Folder-per-class: ``root/<label>/<doc>.txt``, one document per file. Hidden files are ignored."""
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class folders: put .txt files in {root}/<label>/, or pass a CSV/JSONL with "
                        "text and label columns.")
    texts, labels, names, skipped = [], [], [], 0
    for d in classes:
        n_before = len(texts)
        for f in sorted(f for f in d.rglob("*")
                        if f.is_file() and not any(p.startswith(".") for p in f.relative_to(d).parts)):
            if f.suffix.lower() not in TEXT_SUFFIXES:
                if opts.skip_bad:
                    skipped += 1
                    continue
                raise DataError(f"{f} is not a .txt file: remove it, or pass --skip-bad to skip such files.")
            text = _read_text_file(f, opts)
            if text is None or not _check_text(text, str(f), opts):
                skipped += 1
                continue
            texts.append(text)
            labels.append(d.name)
            names.append(str(f))
        if len(texts) == n_before:
            raise DataError(f"Class folder {d} has no usable .txt files: add some or remove the folder.")
    if skipped:
        warn(f"skipped {skipped} file(s) under {root} (not .txt, not {opts.encoding}, or empty)")
    return TextSet(texts, labels, names, str(root))


def _read_text_file(f: Path, opts: TextOptions) -> str | None:
    data = f.read_bytes()
    try:
        return data.decode(opts.encoding).removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        if opts.skip_bad:
            return None
        raise DataError(
            f"{f} is not {opts.encoding} text (byte 0x{data[err.start]:02x} at position {err.start}): re-save it as "
            "UTF-8, pass --encoding (e.g. latin-1 or cp1252), or --skip-bad to leave it out."
        ) from None
    except LookupError:
        raise DataError(f"Unknown encoding {opts.encoding!r}: use a Python codec name such as utf-8, "
                        "latin-1 or cp1252.") from None


def _check_text(text: Any, where: str, opts: TextOptions) -> bool:
    """False (skip) or an error for texts that are empty, whitespace-only or not strings."""
    if isinstance(text, str) and text.strip():
        return True
    what = ("is empty or whitespace only" if isinstance(text, str) or text is None
            else f"is not text ({type(text).__name__})")
    if opts.skip_bad:
        return False
    raise DataError(f"{where}: the text {what}: fill it in or remove it (or pass --skip-bad to skip such texts).")


def read_text_table(path: Path, opts: TextOptions) -> tuple[TextSet, dict[str, TextSet]]:
    """CSV/TSV (header row) or JSONL with a text column, a label column and an optional ``split`` column."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long documents in one cell are fine
    if opts.encoding.lower().replace("-", "") not in ("utf8", "utf8sig"):
        raise DataError(f"{path}: tables are read as UTF-8; re-save it as UTF-8 (--encoding applies to .txt folders).")
    rows = read_rows(path)
    if not rows:
        raise DataError(f"{path} has no rows: add one row per text with its label.")
    warn_repeated_rows(path, rows)
    records = [r for _, r in rows]
    lines = [f"{path} line {i}" for i, _ in rows]
    return _records_with_splits(records, str(path), opts, lines)


def _records_with_splits(records: list[dict], origin: str, opts: TextOptions,
                         names: list[str]) -> tuple[TextSet, dict[str, TextSet]]:
    if records:  # columns and single/multi-label are decided once for all splits, so they agree
        text_col, label_col = choose_columns(list(records[0]), origin, opts, records[0])
        check_label_kinds([_get(r, label_col) for r in records], names, label_col)
        multi = opts.multi_label if opts.multi_label is not None else _is_multi(records, label_col, opts)
        opts = dataclasses.replace(opts, text_column=text_col, label_column=label_col, multi_label=multi)
    if records and "split" in {str(k).lower() for k in records[0]}:
        parts: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(records):
            value = str(_get(r, "split") or "train").strip().lower()
            split = next((k for k, ns in SPLIT_DIRS.items() if value in ns), None)
            if split is None:
                raise DataError(f"{names[i]}: split {value!r} is not train, val or test.")
            parts[split].append(i)
        sets = {k: _from_records([records[i] for i in idx], origin, opts, [names[i] for i in idx])
                for k, idx in parts.items()}
        if "train" not in sets:
            raise DataError(f"{origin} has no training rows: give rows with split=train (or no split column).")
        train = sets.pop("train")
        return train, sets
    return _from_records(records, origin, opts, names), {}


def _get(record: dict, column: str) -> Any:
    if column in record:
        return record[column]
    lowered = {str(k).lower(): k for k in record}
    return record.get(lowered.get(column.lower(), column))


def choose_columns(columns: list[str], origin: str, opts: TextOptions, sample: dict | None = None) -> tuple[str, str]:
    """The text and label columns: as named, else guessed by name; ambiguity is an error that says what to pass."""
    lowered = {str(c).lower(): str(c) for c in columns}
    shown = ", ".join(map(str, columns))

    def named(given: str | None, flag: str) -> str | None:
        if given is None:
            return None
        if given.lower() not in lowered:
            raise DataError(f"{origin} has no column {given!r} (given by {flag}); its columns are: {shown}.")
        return lowered[given.lower()]

    text_col = named(opts.text_column, "--text-column")
    label_col = named(opts.label_column, "--label-column")
    if label_col is None:
        found = [lowered[c] for c in LABEL_COLUMNS if c in lowered and lowered[c] != text_col]
        if not found:
            raise DataError(f"{origin} has no label column (looked for {', '.join(LABEL_COLUMNS[:6])}, ...); its "
                            f"columns are: {shown}. Pass --label-column.")
        if len(found) > 1:
            raise DataError(f"{origin} has several possible label columns ({', '.join(found)}): pass --label-column.")
        label_col = found[0]
    if text_col is None:
        found = [lowered[c] for c in TEXT_COLUMNS if c in lowered and lowered[c] != label_col]
        if len(found) > 1:
            raise DataError(f"{origin} has several possible text columns ({', '.join(found)}): pass --text-column.")
        if not found:
            rest = [c for c in map(str, columns) if c != label_col and c.lower() != "split"
                    and (sample is None or isinstance(_get(sample, c), str))]
            if len(rest) != 1:
                raise DataError(f"{origin}: cannot tell which column holds the text (columns: {shown}): "
                                "pass --text-column.")
            info(f"using column {rest[0]!r} of {origin} as the text (pass --text-column to choose another)")
            found = rest
        text_col = found[0]
    return text_col, label_col


def _from_records(records: list[dict], origin: str, opts: TextOptions, names: list[str] | None = None) -> TextSet:
    if not records:
        raise DataError(f"{origin} has no rows: add one row per text with its label.")
    names = names or [f"{origin} row {i}" for i in range(len(records))]
    text_col, label_col = choose_columns(list(records[0]), origin, opts, records[0])
    raw = [_get(r, label_col) for r in records]
    check_label_kinds(raw, names, label_col)
    multi = opts.multi_label if opts.multi_label is not None else _is_multi(records, label_col, opts)
    texts, labels, kept, skipped = [], [], [], 0
    for r, y, where in zip(records, raw, names, strict=True):
        text = _get(r, text_col)
        if not _check_text(text, where, opts):
            skipped += 1
            continue
        label = parse_label(y, multi, opts.label_sep, where)
        if label is None:
            if opts.skip_bad:
                skipped += 1
                continue
            raise missing_label(where, label_col, y)
        texts.append(text)
        labels.append(label)
        kept.append(where)
    if skipped:
        warn(f"skipped {skipped} row(s) of {origin} with an empty text or label")
    return TextSet(texts, labels, kept, origin, multi)


def _is_multi(records: list[dict], label_col: str, opts: TextOptions) -> bool:
    return is_multi([_get(r, label_col) for r in records], opts.label_sep)


def _is_dataframe(x: Any) -> bool:
    return type(x).__module__.startswith("pandas") and hasattr(x, "to_dict") and hasattr(x, "columns")


def _is_hf_dataset(x: Any) -> bool:
    return type(x).__module__.startswith("datasets") and hasattr(x, "column_names")


def _is_saved_hf_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or ((path / "state.json").is_file()
                                                      and (path / "dataset_info.json").is_file())


def _columns(x: Any) -> list[str]:
    if _is_dataframe(x):
        return [str(c) for c in x.columns]
    names = x.column_names
    return list(next(iter(names.values()))) if isinstance(names, dict) else list(names)


def _from_hf(ds: Any, origin: str, opts: TextOptions) -> tuple[TextSet, dict[str, TextSet]]:
    """A ``datasets.Dataset`` (or a ``DatasetDict`` with train/validation/test), ClassLabel ids turned into names."""
    if isinstance(getattr(ds, "column_names", None), dict):  # DatasetDict
        # columns and single/multi-label are decided once for all splits, so they agree
        first = next(iter(ds.values()))
        text_col, label_col = choose_columns(list(first.column_names), origin, opts, first[0] if len(first) else None)
        multi = (opts.multi_label if opts.multi_label is not None
                 else any(_hf_is_multi(part, label_col) for part in ds.values()))
        opts = dataclasses.replace(opts, text_column=text_col, label_column=label_col, multi_label=multi)
        parts = {}
        for key, part in ds.items():
            split = next((k for k, ns in SPLIT_DIRS.items() if key.lower() in ns), None)
            if split is None:
                raise DataError(f"{origin} has a split {key!r} that is not train, validation or test: select "
                                "the splits to use.")
            parts[split] = _hf_records(part, f"{origin}[{key}]", opts)
        if "train" not in parts:
            raise DataError(f"{origin} has no 'train' split (it has {', '.join(ds.keys())}).")
        train = parts.pop("train")
        return train, parts
    return _hf_records(ds, origin, opts), {}


def _hf_is_multi(ds: Any, label_col: str) -> bool:
    feature = ds.features.get(label_col)
    return (type(feature).__name__ in ("Sequence", "List", "LargeList")
            or (len(ds) > 0 and isinstance(ds[0][label_col], list)))


def _hf_records(ds: Any, origin: str, opts: TextOptions) -> TextSet:
    text_col, label_col = choose_columns(list(ds.column_names), origin, opts, ds[0] if len(ds) else None)
    feature = ds.features.get(label_col)
    names_of = getattr(feature, "names", None) or getattr(getattr(feature, "feature", None), "names", None)
    values = ds[label_col]
    if names_of:  # ClassLabel (or a sequence of ClassLabel): ids -> names; -1 means "no label" (e.g. GLUE test sets)
        values = [[names_of[v] for v in y if v >= 0] if isinstance(y, list) else (names_of[y] if y >= 0 else None)
                  for y in values]
    records = [{text_col: t, label_col: y} for t, y in zip(ds[text_col], values, strict=True)]
    o = dataclasses.replace(opts, text_column=text_col, label_column=label_col)
    return _from_records(records, origin, o, [f"{origin} row {i}" for i in range(len(records))])


# --- tokenisation -------------------------------------------------------------------------------------------


@dataclass
class EncodedTexts:
    """Token ids and masks padded to the longest text of the set (batches trim further), with targets.

    ``targets`` are class indices ``(N,)``, or multi-hot floats ``(N, C)`` for multi-label data.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor
    fingerprints: list[str]
    names: list[str]
    texts: list[str]
    truncated: int = 0
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def multi_label(self) -> bool:
        return self.targets.ndim == 2

    def subset(self, idx: Any) -> EncodedTexts:
        """The texts at positions ``idx`` (a cross-validation fold)."""
        idx = [int(i) for i in idx]
        return dataclasses.replace(self, input_ids=self.input_ids[idx], attention_mask=self.attention_mask[idx],
                                   targets=self.targets[idx], fingerprints=[self.fingerprints[i] for i in idx],
                                   names=[self.names[i] for i in idx], texts=[self.texts[i] for i in idx],
                                   truncated=0, skipped=[])


def targets_of(ds: TextSet, classes: list[str]) -> torch.Tensor:
    return label_targets(ds.labels, classes, ds.multi_label)


HUGE_TEXT = 100_000  # characters: more than any document an encoder reads; likely a whole file in one cell


def encode_texts(texts: list[str], tokenizer: Any, max_length: int, targets: torch.Tensor | None = None,
                 names: list[str] | None = None, description: str = "tokenising") -> EncodedTexts:
    """Tokenise once, with the backbone's tokenizer, truncating at ``max_length`` tokens (counted in ``truncated``).

    Inputs are cut to ``64 * max_length`` characters before tokenising (no tokenizer needs more to fill
    ``max_length`` tokens), so a 1 MB "text" costs no more than a page; texts over 100,000 characters are
    named in a warning, since they are rarely meant as one example.
    """
    import torch

    limit = 64 * max_length
    cut = [t[:limit] for t in texts]
    huge = [i for i, t in enumerate(texts) if len(t) > HUGE_TEXT]
    if huge:
        first = names[huge[0]] if names else f"#{huge[0]}"
        warn(f"{len(huge)} text(s) exceed {HUGE_TEXT:,} characters (first: {first}, {len(texts[huge[0]]):,} "
             f"characters); only their first {max_length} tokens are used")
    if not cut:
        empty = torch.zeros(0, 1, dtype=torch.long)
        enc, over = {"input_ids": empty, "attention_mask": empty}, []
    else:
        with progress() as bar:
            job = bar.add_task(description, total=len(texts), status="")
            enc = tokenizer(cut, truncation=True, max_length=max_length, padding="longest", return_tensors="pt",
                            return_token_type_ids=False)
            if enc.encodings is not None:  # fast tokenizers keep what truncation cut off: one pass suffices
                over = [bool(e.overflowing) for e in enc.encodings]
            else:  # slow tokenizers: measure the full lengths separately
                full = tokenizer(cut, truncation=False, return_attention_mask=False, verbose=False)["input_ids"]
                over = [len(ids) > max_length for ids in full]
            bar.advance(job, len(texts))
    truncated = sum(o or len(t) > limit for o, t in zip(over, texts, strict=True))
    return EncodedTexts(
        input_ids=enc["input_ids"].to(torch.int32),
        attention_mask=enc["attention_mask"].to(torch.int8),
        targets=targets if targets is not None else torch.zeros(len(texts), dtype=torch.long),
        fingerprints=[hashlib.sha1(t.encode("utf-8", "surrogatepass")).hexdigest() for t in texts],
        names=list(names) if names is not None else [f"#{i}" for i in range(len(texts))],
        texts=list(texts),
        truncated=truncated,
    )


def encode_set(ds: TextSet, backbone: Any, classes: list[str], description: str = "tokenising") -> EncodedTexts:
    return encode_texts(ds.texts, backbone.tokenizer, backbone.preprocess.max_length, targets_of(ds, classes), ds.names,
                        description)
