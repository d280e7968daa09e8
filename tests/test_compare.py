"""``transferkit compare``: budgets, nested label draws, intervals over seeds, the headlines and the report files."""

from __future__ import annotations

import csv
import json

import pytest

from conftest import write_colour_images, write_topic_folders
from transferkit.comparison import (
    ALL,
    budget_splits,
    headlines,
    parse_budgets,
    resolution_warnings,
    seed_interval,
    summarise,
)
from transferkit.data.sources import ImageSet
from transferkit.errors import TransferkitError


def test_parse_budgets_sorts_and_refuses_nonsense():
    assert parse_budgets("all,25,5,10") == [5, 10, 25, ALL]
    assert parse_budgets([10, "ALL", 2]) == [2, 10, ALL]
    for bad in ("1,5", "five", "5,5", ""):
        with pytest.raises(TransferkitError):
            parse_budgets(bad)


def test_seed_interval_is_student_t_and_clipped():
    m, lo, hi = seed_interval([0.70, 0.74, 0.72])
    # t(0.975, 2) = 4.3027; sd = 0.02; half-width 4.3027 * 0.02 / sqrt(3) = 0.04968
    assert m == pytest.approx(0.72)
    assert lo == pytest.approx(0.72 - 0.04968, abs=1e-4) and hi == pytest.approx(0.72 + 0.04968, abs=1e-4)
    assert seed_interval([0.5]) == (0.5, None, None)
    _, lo, hi = seed_interval([0.1, 0.9])  # two seeds far apart: t(0.975, 1) = 12.7 would leave [0, 1]
    assert (lo, hi) == (0.0, 1.0)


def _pool(per_class: int = 20) -> tuple[ImageSet, ImageSet]:
    import numpy as np

    labels = [c for c in "abc" for _ in range(per_class)]
    items = [np.full((8, 8), i, dtype=np.uint8) for i in range(len(labels))]
    test = ImageSet([np.zeros((8, 8), np.uint8)] * 3, ["a", "b", "c"])
    return ImageSet(items, labels, "pool"), test


def _ids(ds) -> set[int]:
    return {int(x[0, 0]) for x in ds.items}


def test_budget_splits_are_nested_stratified_and_keep_the_test_set():
    pool, test = _pool()
    small = budget_splits(pool, test, ["a", "b", "c"], 4, seed=1, val_fraction=0.25)
    large = budget_splits(pool, test, ["a", "b", "c"], 10, seed=1, val_fraction=0.25)
    every = budget_splits(pool, test, ["a", "b", "c"], ALL, seed=1, val_fraction=0.25)
    for part, k in ((small, 4), (large, 10), (every, 20)):
        labels = part.train.labels + part.val.labels
        assert {c: labels.count(c) for c in "abc"} == {"a": k, "b": k, "c": k}
        assert set(part.val.labels) == {"a", "b", "c"} and not _ids(part.train) & _ids(part.val)
        assert part.test is test
    assert _ids(small.train) | _ids(small.val) <= _ids(large.train) | _ids(large.val)  # nested for one seed
    other = budget_splits(pool, test, ["a", "b", "c"], 4, seed=2, val_fraction=0.25)
    assert _ids(other.train) | _ids(other.val) != _ids(small.train) | _ids(small.val)  # another seed, other labels


def test_budget_splits_take_whole_patients():
    import numpy as np

    labels = [c for c in "ab" for _ in range(12)]
    groups = [f"{c}{i // 3}" for c in "ab" for i in range(12)]  # 4 patients per class, 3 images each
    pool = ImageSet([np.full((4, 4), i, np.uint8) for i in range(24)], labels, "pool", groups=groups)
    part = budget_splits(pool, ImageSet([], [], "t", groups=[]), ["a", "b"], 5, seed=0, val_fraction=0.3)
    chosen = (part.train.groups or []) + (part.val.groups or [])
    assert all(chosen.count(g) == 3 for g in set(chosen))  # a patient is taken whole or not at all
    assert not set(part.train.groups) & set(part.val.groups)
    assert len({g for g in chosen if g.startswith("a")}) == 2  # 2 patients, 6 images: the first to reach 5
    tiny = budget_splits(pool, ImageSet([], [], "t", groups=[]), ["a", "b"], 2, seed=0, val_fraction=0.15)
    assert set(tiny.val.labels) == {"a", "b"}  # one patient would fill a budget of 2, but validation needs a second


def _run(budget, seed, strategy, score, gap, curve, labels):
    return {"budget": str(budget), "seed": seed, "strategy": strategy, "score": score, "gap": gap, "curve": curve,
            "labels": labels * 2, "labels_per_class": labels, "wall_s": curve[-1][0], "test_accuracy_ci": None}


def _synthetic_runs():
    runs = []
    for seed in range(2):
        # scratch: best validation 0.60 reached at 100 s (all labels); 0.40 with 5 labels
        runs.append(_run(ALL, seed, "scratch", 0.62, 0.30, [[50.0, 0.5], [100.0, 0.6], [150.0, 0.55]], 50))
        runs.append(_run(5, seed, "scratch", 0.40, 0.50, [[10.0, 0.3], [20.0, 0.4]], 5))
        # linear: reaches 0.60 at 10 s; 0.63 with 5 labels already
        runs.append(_run(ALL, seed, "linear", 0.70, 0.10, [[5.0, 0.55], [10.0, 0.6], [12.0, 0.65]], 50))
        runs.append(_run(5, seed, "linear", 0.63, 0.20, [[1.0, 0.5], [2.0, 0.6]], 5))
    return runs


def test_headlines_answer_time_labels_and_gap_with_their_numbers():
    runs = _synthetic_runs()
    summary = summarise(runs, ["linear", "scratch"], [5, ALL])
    h = headlines(runs, summary, ["linear", "scratch"], [5, ALL], "accuracy")
    assert h["time"]["strategy"] == "linear" and h["time"]["saved_s"] == pytest.approx(90.0)
    assert h["time"]["speedup"] == pytest.approx(10.0)
    assert "10 s against scratch's 100 s" in h["time"]["sentence"]
    assert h["labels"]["labels_per_class"] == 5 and h["labels"]["fewer"] == pytest.approx(10.0)
    assert "5 labels per class to match scratch with all 50" in h["labels"]["sentence"]
    # mean gap over budgets: linear (0.10 + 0.20) / 2 = 0.15, scratch (0.30 + 0.50) / 2 = 0.40
    assert h["gap"]["transfer"] == pytest.approx(0.15) and h["gap"]["scratch"] == pytest.approx(0.40)
    assert "0.250 smaller (62% less)" in h["gap"]["sentence"]


def test_labels_headline_when_transfer_matches_only_with_all_labels():
    runs = [r | {"score": 0.35} if r["strategy"] == "linear" and r["budget"] == "5" else r for r in _synthetic_runs()]
    summary = summarise(runs, ["linear", "scratch"], [5, ALL])
    h = headlines(runs, summary, ["linear", "scratch"], [5, ALL], "accuracy")
    assert h["labels"]["fewer"] == 1.0 and "no labels saved" in h["labels"]["sentence"]


def test_headlines_say_when_transfer_did_not_pay_off():
    runs = [r | {"score": 0.3, "curve": [[5.0, 0.2]]} if r["strategy"] == "linear" else r for r in _synthetic_runs()]
    summary = summarise(runs, ["linear", "scratch"], [5, ALL])
    h = headlines(runs, summary, ["linear", "scratch"], [5, ALL], "accuracy")
    assert h["time"]["sentence"].startswith("No transfer strategy reached scratch's best")
    assert h["labels"]["sentence"].startswith("No transfer strategy matched scratch's")
    without = headlines(runs, summary, ["linear", "finetune"], [5, ALL], "accuracy")
    assert "Add scratch" in without["time"]["sentence"]


def test_resolution_warning_when_the_test_set_cannot_separate_strategies():
    summary = summarise(_synthetic_runs(), ["linear", "scratch"], [5, ALL])
    # 0.70 vs 0.62 on 50 test examples: the Wilson half-width is about 0.12, larger than the 0.08 difference
    warnings = resolution_warnings(summary, ["linear", "scratch"], [5, ALL], "accuracy", 50)
    assert len(warnings) == 1 and warnings[0].startswith("with all labels, linear (0.700) and scratch (0.620)")
    assert "cannot tell them apart" in warnings[0]  # with 5 labels, 0.63 vs 0.40 is resolved
    assert not [w for w in resolution_warnings(summary, ["linear", "scratch"], [ALL], "accuracy", 100_000)]


def test_compare_end_to_end_writes_csv_plots_html_and_resumes(tmp_path, tiny_backbone, monkeypatch):
    import transferkit

    root = tmp_path / "colours"
    write_colour_images(root / "train", 8, seed=1)
    write_colour_images(root / "test", 4, seed=2)
    out = tmp_path / "cmp"
    result = transferkit.compare(root, budgets="3,all", seeds=2, strategies="linear,scratch", backbone=tiny_backbone,
                                 out=out, epochs=2)
    assert len(result["runs"]) == 2 * 2 * 2
    assert {r["budget"] for r in result["runs"]} == {"3", "all"}
    assert all(r["labels_per_class"] == (3 if r["budget"] == "3" else 8) for r in result["runs"])
    for name in ("results.csv", "summary.csv", "compare.json", "data_efficiency.png", "time_to_accuracy.png",
                 "overfitting_gap.png", "report.md", "report.html"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 8 and {r["strategy"] for r in rows} == {"linear", "scratch"}
    summary = list(csv.DictReader((out / "summary.csv").open()))
    assert len(summary) == 4 and all(r["score_lo"] for r in summary)  # 2 seeds: an interval
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "Headlines" in page and "<script" not in page
    assert all(r["curve"] and r["curve"][0][0] > 0 for r in result["runs"])  # validation score over wall time
    assert json.loads((out / "compare.json").read_text())["headlines"]["time"]["sentence"]
    test_n = result["config"]["test_n"]
    assert test_n == 12 and all(r["score"] == r["test_accuracy"] for r in result["runs"])

    def boom(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("transferkit.api.fit", boom)
    again = transferkit.compare(root, budgets="3,all", seeds=2, strategies="linear,scratch", backbone=tiny_backbone,
                                out=out, epochs=2, resume=True)
    assert [r["score"] for r in again["runs"]] == [r["score"] for r in result["runs"]]


def test_a_failing_run_is_reported_and_the_rest_go_on(tmp_path, tiny_backbone, monkeypatch):
    import transferkit
    import transferkit.api

    root = tmp_path / "colours"
    write_colour_images(root / "train", 6, seed=1)
    write_colour_images(root / "test", 3, seed=2)
    real = transferkit.api.fit

    def flaky(data, **kw):
        if kw["strategy"] == "scratch" and kw["seed"] == 1:
            raise TransferkitError("out of patience")
        return real(data, **kw)

    monkeypatch.setattr(transferkit.api, "fit", flaky)
    out = tmp_path / "cmp"
    result = transferkit.compare(root, budgets="all", seeds=2, strategies="linear,scratch", backbone=tiny_backbone,
                                 out=out, epochs=1)
    assert len(result["runs"]) == 3 and result["failed"][0]["failed"] == "out of patience"
    assert "## Failed runs" in (out / "report.md").read_text()
    assert not (out / "runs" / "scratch-ball-s1.json").exists()  # --resume tries it again


def test_compare_refuses_bad_options_before_training(tmp_path, tiny_backbone):
    import transferkit

    root = tmp_path / "colours"
    write_colour_images(root, 6)
    for kwargs, words in (({"strategies": "linear"}, "two different strategies"),
                          ({"strategies": "linear,warp"}, "warp"), ({"seeds": 0}, "seeds"),
                          ({"metric": "auroc"}, "medical"), ({"budgets": "1"}, "2 or more"),
                          # epochs is scratch's (linear, a probe, is run without it); an option no strategy takes fails
                          ({"strategies": "linear,scratch", "epoch": 3}, "no option 'epoch'"),
                          ({"strategies": "linear,classical", "epochs": 3}, "no option 'epochs'")):
        with pytest.raises(TransferkitError, match=words):
            transferkit.compare(root, backbone=tiny_backbone, **kwargs)


def test_compare_medical_draws_whole_patients_and_scores_auroc(dicom_manifest, tiny_backbone, tmp_path):
    import transferkit

    result = transferkit.compare(dicom_manifest, budgets="2,all", seeds=1, strategies="linear,scratch",
                                 backbone=tiny_backbone, out=tmp_path / "cmp", epochs=1)
    assert result["config"]["kind"] == "medical" and result["config"]["metric"] == "auroc"
    assert not result["failed"] and len(result["runs"]) == 4
    small = [r for r in result["runs"] if r["budget"] == "2"]
    # 2 slices per patient and at least two patients per class: validation gets a patient of each class
    assert all(r["labels"] == 8 and r["val_n"] >= 4 and r["labels"] % 2 == 0 for r in small)
    assert all(0 <= r["score"] <= 1 and r["test_auroc_ci"] for r in result["runs"])
    assert "AUROC" in (tmp_path / "cmp" / "report.md").read_text()


def test_compare_refuses_detection_data(box_folder):
    import transferkit

    with pytest.raises(TransferkitError, match="holds boxes"):
        transferkit.compare(box_folder)


def test_compare_texts_and_the_cli(tmp_path, tiny_text_backbone):
    from typer.testing import CliRunner

    from transferkit.cli import app

    root = write_topic_folders(tmp_path / "topics", 8, 4)
    out = tmp_path / "cmp"
    r = CliRunner().invoke(app, ["compare", str(root), "--budgets", "4,all", "--seeds", "1", "--strategies",
                                 "linear,scratch", "--backbone", tiny_text_backbone, "--epochs", "2",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "report:" in r.output and (out / "report.html").exists()
    saved = json.loads((out / "compare.json").read_text())
    assert saved["config"]["kind"] == "text" and len(saved["runs"]) == 4
    assert all(r["score_lo"] is None for r in saved["summary"])  # one seed: no interval over seeds

    # its run.yaml runs the same comparison again, to the same scores
    import yaml

    doc = yaml.safe_load((out / "run.yaml").read_text())
    assert doc["command"] == "compare" and doc["data"] == str(root.resolve())
    assert (doc["settings"]["budgets"], doc["settings"]["epochs"]) == ("4,all", 2)
    r = CliRunner().invoke(app, ["compare", "--config", str(out / "run.yaml"), "--out", str(tmp_path / "again")])
    assert r.exit_code == 0, r.output
    again = json.loads((tmp_path / "again" / "compare.json").read_text())
    assert [x["score"] for x in again["runs"]] == [x["score"] for x in saved["runs"]]


def test_macro_f1_bootstrap_matches_sklearn_resample_by_resample():
    import numpy as np
    from sklearn.metrics import f1_score

    from transferkit.evaluation.metrics import bootstrap_macro_f1, bootstrap_micro_f1, classification_metrics

    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 120)
    pred = np.where(rng.random(120) < 0.7, y, rng.integers(0, 4, 120))
    lo, hi = bootstrap_macro_f1(y, pred, 4, n_boot=300, chunk=300)
    idx = np.random.default_rng(0).integers(0, 120, (300, 120))
    ref = [f1_score(y[i], pred[i], average="macro", zero_division=0) for i in idx]  # classes the resample holds
    assert [lo, hi] == pytest.approx(list(np.percentile(ref, [2.5, 97.5])))
    assert lo < f1_score(y, pred, average="macro") < hi
    m = classification_metrics(y, np.eye(4)[pred], list("abcd"))
    assert m["macro_f1_ci"][0] < m["macro_f1"] < m["macro_f1_ci"][1]
    rare = np.array([0] * 40 + [1] * 40 + [2] * 2)  # a rare class predicted right is not punished when left out
    lo, hi = bootstrap_macro_f1(rare, rare.copy(), 3)
    assert lo == hi == 1.0
    multi_true = rng.random((80, 3)) < 0.4
    multi_pred = np.where(rng.random((80, 3)) < 0.8, multi_true, ~multi_true)
    lo, hi = bootstrap_micro_f1(multi_true, multi_pred)
    assert lo < f1_score(multi_true, multi_pred, average="micro") < hi


def test_compare_a_list_of_texts_with_labels(tiny_text_backbone):
    import transferkit
    from conftest import topic_texts

    rows = topic_texts(10)
    result = transferkit.compare([t for t, _ in rows], labels=[y for _, y in rows], budgets="3", seeds=1,
                                 strategies="linear,scratch", backbone=tiny_text_backbone, epochs=1)
    assert result["config"]["kind"] == "text" and len(result["runs"]) == 2
    assert result["config"]["test_n"] == 6  # 20% of 30 carved once as the fixed test set


def test_classical_headline_says_where_the_baseline_beats_transfer():
    base = [_run(b, s, "classical", score, None, [[1.0, 0.0]], n)
            | {"curve": [], "kept": "TF-IDF + logistic regression"}
            for s in range(2) for b, score, n in ((5, 0.80, 5), (ALL, 0.65, 50))]
    runs = _synthetic_runs() + base
    names = ["linear", "scratch", "classical"]
    summary = summarise(runs, names, [5, ALL])
    h = headlines(runs, summary, names, [5, ALL], "accuracy")
    assert h["classical"]["wins"] == ["5"]
    assert h["classical"]["sentence"] == ("The classical baseline (TF-IDF + logistic regression) beats transfer at 5 "
                                          "labels per class: 0.800 against linear's 0.630 (test accuracy). Transfer is "
                                          "at least as good with all labels.")
    # the baseline is no transfer strategy: the other headlines still compare linear with scratch
    assert h["time"]["strategy"] == "linear" and h["gap"]["transfer"] == pytest.approx(0.15)
    losing = [r | {"score": 0.5} if r["strategy"] == "classical" else r for r in runs]
    h = headlines(losing, summarise(losing, names, [5, ALL]), names, [5, ALL], "accuracy")
    assert not h["classical"]["wins"] and h["classical"]["sentence"].startswith(
        "Transfer beat the classical baseline (TF-IDF + logistic regression) at every budget; the closest at 5 labels "
        "per class: linear 0.630 against 0.500")
    # the test set's resolution is checked for the best transfer strategy against the baseline too
    warnings = resolution_warnings(summarise(runs, names, [5, ALL]), names, [5, ALL], "accuracy", 50)
    assert any("linear (0.700) and classical (0.650)" in w for w in warnings)


def test_compare_with_the_classical_baseline(tmp_path, tiny_backbone):
    import transferkit

    root = tmp_path / "colours"
    write_colour_images(root / "train", 8, seed=1)
    write_colour_images(root / "test", 4, seed=2)
    out = tmp_path / "cmp"
    result = transferkit.compare(root, budgets="3,all", seeds=1, strategies="linear,classical", backbone=tiny_backbone,
                                 out=out)
    base = [r for r in result["runs"] if r["strategy"] == "classical"]
    assert not result["failed"] and len(base) == 2
    for r in base:
        # colour patches: cross-validation prefers the thumbnail alone to HOG + thumbnail (see FEATURES)
        assert r["kept"] == "colour thumbnail + logistic regression" and r["score"] == r["test_accuracy"]
        assert r["gap"] is None and r["curve"] == [] and r["val_n"] == 0 and r["wall_s"] > 0
        assert r["score"] >= 0.9
    linear = {r["budget"]: r for r in result["runs"] if r["strategy"] == "linear"}
    assert {r["budget"]: r["labels"] for r in base} == {b: r["labels"] for b, r in linear.items()}  # same labels
    report = (out / "report.md").read_text()
    assert "classical baseline (colour thumbnail + logistic regression)" in report
    assert "| labels/class | linear | classical |" in report
    assert (out / "runs" / "classical-b3-s0.json").exists()  # saved like any run, so --resume reuses it
    assert "classical" in result["headlines"] and "Add scratch" in result["headlines"]["time"]["sentence"]


def test_compare_medical_classical_baseline_scores_auroc(dicom_manifest, tiny_backbone):
    import transferkit

    result = transferkit.compare(dicom_manifest, budgets="all", seeds=1, strategies="linear,classical",
                                 backbone=tiny_backbone)
    base = next(r for r in result["runs"] if r["strategy"] == "classical")
    assert result["config"]["metric"] == "auroc" and not result["failed"]
    assert 0 <= base["score"] <= 1 and base["test_auroc_ci"] and base["kept"].endswith("+ logistic regression")


@pytest.mark.parametrize("modality", ["image", "text", "audio"])
def test_compare_runs_the_classical_baseline_for_every_modality(modality, request):
    """Every modality of the baseline's feature registry, through compare: decoded without the runs' backbone,
    scored on the same test set, well above chance on these separable toy sets."""
    import transferkit
    from transferkit.strategies.classical import FEATURES

    assert modality in FEATURES
    data, backbone = {"image": ("colour_splits", "tiny_backbone"), "text": ("text_folder", "tiny_text_backbone"),
                      "audio": ("audio_folder", "tiny_backbone")}[modality]
    result = transferkit.compare(request.getfixturevalue(data), budgets="all", seeds=1, strategies="linear,classical",
                                 backbone=request.getfixturevalue(backbone))
    base = next(r for r in result["runs"] if r["strategy"] == "classical")
    assert result["config"]["kind"] == modality and not result["failed"]
    linear = next(r for r in result["runs"] if r["strategy"] == "linear")
    assert base["score"] >= 0.8 and base["labels"] == linear["labels"]
    assert result["headlines"]["classical"]["per_budget"][0]["classical"] == base["score"]


@pytest.mark.slow
def test_compare_spread_over_workers_matches_the_loop(tmp_path, tiny_backbone, postgres_url):
    """The grid's runs queued in a study: two `--worker` processes on PostgreSQL take them and the call with --out
    collects them; `--workers 2` on the default SQLite file does the same here. Every run once, scored as the plain
    loop scores it."""
    import json
    import os
    import subprocess
    import sys

    import optuna

    import transferkit

    root = tmp_path / "colours"
    write_colour_images(root / "train", 8, seed=1)
    write_colour_images(root / "test", 4, seed=2)
    grid = dict(budgets="3,all", seeds=2, strategies="linear,classical", backbone=tiny_backbone)
    plain = transferkit.compare(root, out=tmp_path / "plain", **grid)
    scores = {(r["budget"], r["seed"], r["strategy"]): r["score"] for r in plain["runs"]}
    assert len(scores) == 8

    cmd = [sys.executable, "-m", "transferkit", "compare", str(root), "--budgets", "3,all", "--seeds", "2",
           "--strategies", "linear,classical", "--backbone", tiny_backbone, "--storage", postgres_url, "--study", "c",
           "--worker", "--json"]
    env = {**os.environ, "TRANSFERKIT_QUIET": "1"}
    workers = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for p in workers:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()[-2000:]
        assert json.loads(out.decode().strip().splitlines()[-1]) == {"worker": True}
    collected = transferkit.compare(root, out=tmp_path / "pg", storage=postgres_url, study="c", **grid)
    assert {(r["budget"], r["seed"], r["strategy"]): r["score"] for r in collected["runs"]} == pytest.approx(scores)
    trials = optuna.load_study(study_name="c", storage=postgres_url.replace("postgresql://",
                                                                            "postgresql+psycopg://")).trials
    assert len(trials) == 8 and all(t.state.name == "COMPLETE" for t in trials)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 8  # each run once
    assert (tmp_path / "pg" / "report.html").stat().st_size > 0 and len(list((tmp_path / "pg" / "runs").iterdir())) == 8

    spread = transferkit.compare(root, out=tmp_path / "sq", workers=2, **grid)
    assert {(r["budget"], r["seed"], r["strategy"]): r["score"] for r in spread["runs"]} == pytest.approx(scores)
    assert (tmp_path / "compare.db").is_file()
