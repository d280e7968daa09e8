"""Text classification (single- and multi-label): class folders of .txt, tables, DataFrames, Hugging Face
datasets or lists of strings -> token ids, tokenised once -> batches trimmed to their longest text."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..errors import MAX_TEXT_TOKENS, MIN_TEXT_TOKENS, TransferkitError, check_number
from .base import Prepared, RunSettings, replace_preprocess
from .classification import ClassificationTask, LabelOptions, announce, existing_parts


@dataclass
class TextTaskOptions(LabelOptions):
    """How to read texts and how long they may be."""

    labels: list[Any] | None = field(default=None, metadata={
        "help": "With a list of strings as data: one label (or a list of labels) per text."})
    text_column: str | None = field(default=None, metadata={
        "help": "Table column holding the text (default: guessed)."})
    label_column: str | None = field(default=None, metadata={
        "help": "Table column holding the label (default: guessed)."})
    encoding: str = field(default="utf-8", metadata={"help": "Encoding of .txt files and tables."})
    max_length: int | None = field(default=None, metadata={"help": "Tokens per text (default: the encoder's)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_length is not None:
            check_number("max_length", self.max_length, low=MIN_TEXT_TOKENS, high=MAX_TEXT_TOKENS, whole=True,
                         example="128")

    def reader(self, skip_bad: bool) -> Any:
        from ..data.text import TextOptions

        return TextOptions(self.text_column, self.label_column, self.label_sep, self.encoding, skip_bad)


class TokenDataset(Dataset):
    """Token ids and masks held in memory (padded to the set's longest text; batches are trimmed later)."""

    def __init__(self, data: Any):
        self.ids, self.mask, self.targets = data.input_ids, data.attention_mask, data.targets

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        return (self.ids[i], self.mask[i]), self.targets[i]


def text_copies(splits: Any) -> Any:
    """The same text (exactly, surrounding spaces aside) in training and in a split that scores the model, or
    twice in a cross-validated training split (:class:`~transferkit.data.copies.Copies`, or None)."""
    from ..data.copies import find_copies

    parts = {name: ([t.strip() for t in ds.texts], ds.names)
             for name, ds in (("train", splits.train), ("val", splits.val), ("test", splits.test)) if ds is not None}
    return find_copies(parts, within=("train",) if splits.val is None else ())


class TextTask(ClassificationTask):
    name = "text"
    title = "text classification"
    bundle_task = "text-classification"
    modality = "text"
    Options = TextTaskOptions
    sniff_order = 20
    plural = "texts"
    unit = "texts"
    inputs = "strings"
    reading_options = ("text_column", "label_column", "label_sep", "encoding")

    def sniff(self, data: Any, hints: dict[str, Any]) -> bool:
        from ..data.text import is_text_source

        if hints.get("labels") is not None:
            return True
        return is_text_source(data, self.options(**{k: v for k, v in hints.items()
                                                    if k in TextTaskOptions.__dataclass_fields__}).reader(False))

    def check(self, settings: RunSettings, options: TextTaskOptions) -> None:
        if settings.image_size is not None:
            raise TransferkitError("image_size applies to images; for texts set max_length.")

    def load_splits(self, data: Any, settings: RunSettings, options: TextTaskOptions,
                    known: Sequence[str] = ()) -> Any:
        from ..data.text import load_text_splits

        return load_text_splits(data, labels=options.labels, options=options.reader(settings.skip_bad),
                                val_fraction=settings.val_fraction, test_fraction=settings.test_fraction,
                                seed=settings.seed, known=known)

    def prepare(self, data: Any, backbone: str | None, settings: RunSettings, options: TextTaskOptions,
                parts: tuple[str, ...] = ("train", "val", "test")) -> Prepared:
        """Texts -> splits, the text backbone (max length applied) and token ids of every split, tokenised once."""
        from ..backbones.registry import create_backbone
        from ..data.text import encode_set

        t = time.monotonic()
        self.check(settings, options)
        start, splits = self.start_and_splits(data, settings, options)
        from ..data.copies import answer_copies

        copies = text_copies(splits)
        answer_copies(copies, self.unit)
        # --init-from: the bundle's encoder, tokenizer and token limit, as they were saved
        bb = start.backbone() if start is not None else create_backbone(backbone, arch=settings.arch, modality="text")
        if options.max_length is not None:
            limit = bb.max_length_limit()
            check_number(f"max_length (for {bb.spec.name})", options.max_length, low=MIN_TEXT_TOKENS, high=limit,
                         whole=True, example="128")
            replace_preprocess(bb, max_length=options.max_length)
        prepared = Prepared(splits, bb, {}, copies=copies, start=start)
        announce(prepared, f"{bb.num_features}-d, {bb.preprocess.pooling} pooling, {bb.preprocess.max_length} tokens")
        prepared.timings["load_s"] = time.monotonic() - t
        t = time.monotonic()
        prepared.encoded = {name: encode_set(ds, bb, splits.classes, f"tokenising {name}")
                            for name, ds in existing_parts(splits, parts)}
        prepared.timings["tokenize_s"] = time.monotonic() - t
        return prepared

    def data_summary(self, prepared: Prepared, multi_label: bool) -> dict[str, Any]:
        copies = prepared.copies
        return prepared.splits.summary() | {
            "multi_label": multi_label, "max_length": prepared.backbone.preprocess.max_length,
            "truncated": {name: d.truncated for name, d in prepared.encoded.items()}} | (
            {"copies": copies.as_dict(self.unit)} if copies is not None else {})

    def input_summary(self, metrics: dict[str, Any]) -> str:
        pre, data = metrics["backbone"]["preprocess"], metrics["data"]
        trunc = data["truncated"]
        n_all = data["train"] + data["val"] + data["test"]
        return (f"{pre['pooling']} pooling{', normalised' if pre['normalize'] else ''}, max {pre['max_length']} "
                f"tokens; {sum(trunc.values())} of {n_all} texts were longer and cut there "
                f"({', '.join(f'{k} {v}' for k, v in trunc.items())})")

    # -- batches ----------------------------------------------------------------------------------------------
    def dataset(self, data: Any, augment: bool = False, hflip: bool = True) -> Dataset:
        return TokenDataset(data)

    def batch_input(self, backbone: Any):
        from ..engine.inference import text_batch

        return lambda x: text_batch(x[0], x[1])

    def sample(self, data: Any, n: int) -> Any:
        return data.input_ids[:n], data.attention_mask[:n]

    def explainer(self, model: Any) -> Any:
        """Integrated gradients on the encoder's word embeddings, summed per word."""
        from ..evaluation.explainers import TokenExplainer

        return TokenExplainer(model.classifier, model.multi_label, model.classes)

    # -- bundle side ------------------------------------------------------------------------------------------
    def export_spec(self, model: Any) -> Any:
        """The graph takes ``input_ids`` and ``attention_mask`` (batch, tokens) int64 as the model's own tokenizer
        gives them (shipped as ``tokenizer.json``; tokenising is outside the graph); pooling is in it."""
        from ..export.onnx import ExportSpec, reference_script

        bb = model.classifier.backbone
        tok = bb.tokenizer
        if not getattr(tok, "is_fast", False):
            raise TransferkitError("This text model's tokenizer has no fast (Rust) version, which an exported folder "
                                   "ships as tokenizer.json: export a model whose backbone has one.")
        pre = bb.preprocess
        ids = torch.full((2, 8), int(tok.pad_token_id or 0), dtype=torch.long)
        ids[:, :6] = torch.randint(1000, 2000, (2, 6))
        mask = (ids != int(tok.pad_token_id or 0)).long()

        def feeds(data: Any, idx: Any) -> dict[str, Any]:
            from ..engine.inference import text_batch

            batch = text_batch(data.input_ids[idx], data.attention_mask[idx])
            return {k: v.numpy() for k, v in batch.items()}

        return ExportSpec(
            prepare=TokenInput(),
            inputs={"input_ids": ids, "attention_mask": mask},
            dynamic={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}},
            preprocessing={"kind": "text", "graph_input": "input_ids, attention_mask: (batch, tokens) int64",
                           "outside_graph": "cut each text to 64 x max_length characters; tokenise with "
                           "tokenizer.json, truncating at max_length tokens (special tokens included), padding "
                           "to the longest with pad_id",
                           "max_length": pre.max_length, "pad_id": int(tok.pad_token_id or 0),
                           "pad_token": str(tok.pad_token or ""), "pooling": pre.pooling, "normalize": pre.normalize},
            feeds=feeds,
            script=reference_script("text"),
            files={"tokenizer.json": tok.backend_tokenizer.to_str().encode()},
            quantization="dynamic",
        )

    def encode(self, model: Any, inputs: Any, skip_bad: bool) -> tuple[Any, list[Any]]:
        from ..console import warn
        from ..data.text import encode_texts

        if isinstance(inputs, str):
            raise TransferkitError("Pass a list of texts, not a single string: model.predict([text]).")
        ok = [isinstance(t, str) and bool(t.strip()) for t in inputs]
        for i, t in enumerate(inputs):
            if ok[i]:
                try:
                    t.encode("utf-8")
                except UnicodeEncodeError:  # a lone surrogate: bytes that were not UTF-8 (a shell argument, JSON)
                    raise TransferkitError(f"Input #{i} is not valid text (bytes that are not UTF-8, or a lone "
                                           "surrogate): fix its encoding.") from None
        bad = [i for i, good in enumerate(ok) if not good]
        kept = [t for t, good in zip(inputs, ok, strict=True) if good]
        if bad and not skip_bad:
            raise TransferkitError(f"Input #{bad[0]} is empty or not a string: give non-empty texts (or "
                                   "skip_bad=True).")
        if bad:
            warn(f"skipped {len(bad)} empty input(s)")
        bb = model.classifier.backbone
        return encode_texts(kept, bb.tokenizer, bb.preprocess.max_length, description="tokenising"), kept

    def read_labelled(self, model: Any, source: Any, skip_bad: bool, **options: Any) -> Any:
        from ..data.text import TextOptions, encode_set, load_text_eval_set

        # read labels the way training did: the model says single- or multi-label, and how cells were split
        options.setdefault("label_sep", model.meta.get("label_sep"))
        if options["label_sep"] is None:
            options.pop("label_sep")
        texts = load_text_eval_set(source, TextOptions(skip_bad=skip_bad, multi_label=model.multi_label, **options))
        model.check_labels(texts.label_names(), source)
        return encode_set(texts, model.classifier.backbone, model.classes)

    def save_files(self, backbone: Any, folder: Path) -> None:
        from ..backbones.text import save_text_files

        save_text_files(backbone, folder)

    def load_backbone(self, folder: Path, spec: Any, config: dict[str, Any]) -> Any:
        from ..backbones.text import TextPreprocessConfig, load_text_files

        if not (folder / "tokenizer").is_dir() or not (folder / "encoder" / "config.json").is_file():
            raise TransferkitError(f"{folder} is a text bundle without tokenizer/ or encoder/config.json: copy the "
                                   "whole model/ folder.")
        return load_text_files(folder, spec, TextPreprocessConfig.from_dict(config["preprocess"]))


class TokenInput(torch.nn.Module):
    """The graph's two inputs -> the dict a text backbone takes (an exported graph's first step)."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"input_ids": input_ids, "attention_mask": attention_mask}
