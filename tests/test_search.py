"""`transferkit search`: spaces declared beside the strategies, an Optuna study in SQLite or a real PostgreSQL server
shared by worker processes (exactly the requested trials; a killed worker's trial failed and run again), the final
model's record, and bad input refused before any work."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import write_colour_images
from transferkit.errors import TransferkitError

# trials of a second or two on the tiny backbone: finetune's schedule fixed short, the probe as declared
FAST = {"finetune": {"epochs": 3}}


def study_rows(url: str, name: str) -> list:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=url.replace("postgresql://", "postgresql+psycopg://")).trials


def test_declared_spaces_and_file_refusals(tmp_path):
    from transferkit.strategies import STRATEGIES
    from transferkit.strategies.space import Range, read_space_file, space_for

    cfg = STRATEGIES["finetune"][1]
    space, fixed = space_for("finetune", cfg, "image")
    assert space["lr"] == Range(1e-4, 3e-3, log=True) and space["epochs"] == Range(5, 25)
    assert space["augment"] == (True, False) and fixed == {}
    text, _ = space_for("finetune", cfg, "text")  # BERT-style rates; no augmentation for texts
    assert text["lr"].high == 3e-4 and "augment" not in text and "head_lr" in text
    lora, _ = space_for("lora", STRATEGIES["lora"][1], "text")
    assert lora["r"] == (4, 8, 16)
    assert space_for("linear", STRATEGIES["linear"][1], "image")[0]["c"] == Range(1e-4, 1e2, log=True)

    changed, fixed = space_for("finetune", cfg, "image", {"lr": {"low": "1e-5", "high": 1e-3, "log": True},
                                                          "epochs": 7, "label_smoothing": None})
    assert changed["lr"] == Range(1e-5, 1e-3, True) and "label_smoothing" not in changed and fixed == {"epochs": 7}

    def refused(changes: dict, strategy: str = "finetune") -> str:
        with pytest.raises(TransferkitError) as err:
            space_for(strategy, STRATEGIES[strategy][1], "image", changes)
        assert "\n" not in str(err.value)
        return str(err.value)

    assert "no option 'lrr' (closest: 'lr')" in refused({"lrr": {"low": 1e-4, "high": 1e-3}})
    assert "empty" in refused({"lr": {"low": 1e-3, "high": 1e-4}})
    assert "empty" in refused({"lr": {"low": 1e-3, "high": 1e-3}})
    assert "above 0" in refused({"lr": {"low": 0, "high": 1e-3, "log": True}})
    assert "whole numbers" in refused({"epochs": {"low": 2.5, "high": 9}})
    assert "choices" in refused({"augment": {"low": 0, "high": 1}})
    assert "is empty" in refused({"augment": []})
    assert "not a bool" in refused({"augment": ["yes"]})
    assert "not a number" in refused({"lr": {"low": "fast", "high": 1}})
    assert "nothing is left" in refused({"c": 1.0, "class_weight": None}, "linear")

    bad = tmp_path / "space.yaml"
    bad.write_text("fintune:\n  lr: {low: 1.0e-5, high: 1.0e-3}\n")
    with pytest.raises(TransferkitError, match=r"space.yaml: strategy 'fintune' is not searched here \(closest: "
                                               r"'finetune'\)"):
        read_space_file(bad, ["linear", "finetune"])
    bad.write_text("finetune: [1, 2]\n")
    with pytest.raises(TransferkitError, match="must map options"):
        read_space_file(bad, ["finetune"])
    bad.write_text("finetune: {lr: [\n")
    with pytest.raises(TransferkitError, match="not readable YAML"):
        read_space_file(bad, ["finetune"])


def test_bad_input_refused_before_any_work(colour_folder, tiny_backbone, tmp_path):
    from transferkit.studies import search

    out = tmp_path / "runs" / "x"
    with pytest.raises(TransferkitError, match="at least 1|trials"):
        search(colour_folder, trials=0, out=out)
    with pytest.raises(TransferkitError, match="sqlite:///path/search.db .* or postgresql://"):
        search(colour_folder, trials=2, out=out, storage="mysql://me@host/db")
    with pytest.raises(TransferkitError, match="Pruner 'fast' is unknown"):
        search(colour_folder, trials=2, out=out, pruner="fast")
    with pytest.raises(TransferkitError, match="auto chooses its own"):
        search(colour_folder, trials=2, out=out, strategy="linear,auto", backbone=tiny_backbone)
    with pytest.raises(TransferkitError, match="'lineer' is not one .* takes \\(closest: 'linear'\\)"):
        search(colour_folder, trials=2, out=out, strategy="lineer", backbone=tiny_backbone)
    # nothing listens on port 1: the database is refused in one line, in seconds, before the data are read
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(TransferkitError) as err:
        search(colour_folder, trials=2, out=out, storage=f"postgresql://me:secret@127.0.0.1:{port}/db")
    message = str(err.value)
    assert message.startswith(f"Cannot open the study database postgresql://me:***@127.0.0.1:{port}/db: ")
    assert "secret" not in message and "\n" not in message
    assert time.monotonic() - t0 < 15
    assert not out.exists()

    r = subprocess.run([sys.executable, "-m", "transferkit", "search", str(colour_folder), "--trials", "0", "--out",
                        str(out)], capture_output=True, text=True, env={**os.environ, "TRANSFERKIT_QUIET": "1"})
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len([x for x in r.stderr.splitlines() if x.strip()]) == 1 and "trials" in r.stderr


@pytest.mark.slow
def test_search_final_model_record_and_reproducible(colour_folder, tiny_backbone, tmp_path):
    """One worker, SQLite: the trials and the final model come out the same for the same seed; every strategy is
    tried; the final model's report, card, metrics and search.json record the search and the comparison."""
    import transferkit

    runs = []
    for name in ("a", "b"):
        out = tmp_path / "runs" / name
        model = transferkit.search(colour_folder, trials=4, strategy="linear,finetune", space=FAST, seed=3,
                                   backbone=tiny_backbone, out=out, storage=f"sqlite:///{tmp_path / 'search.db'}")
        runs.append((out, model))
    tables = [json.loads((out / "search.json").read_text())["table"] for out, _ in runs]
    for rows in tables:
        assert [r["number"] for r in rows] == [0, 1, 2, 3]
        assert all(r["state"] in ("complete", "pruned") for r in rows)
        assert [rows[0]["params"]["strategy"], rows[1]["params"]["strategy"]] == ["linear", "finetune"]
    strip = [[{k: r[k] for k in ("state", "value", "params")} for r in rows] for rows in tables]
    assert strip[0] == strip[1]
    images = sorted(str(p) for p in colour_folder.rglob("*.png"))[:6]
    p0, p1 = (np.array([[c["probability"] for c in r["top"]] for r in m.predict(images)]) for _, m in runs)
    np.testing.assert_allclose(p0, p1, atol=1e-6)

    out, model = runs[0]
    s = model.metrics["search"]
    assert s["trials"]["planned"] == 4 and s["trials"]["complete"] + s["trials"]["pruned"] == 4
    assert s["best"]["value"] == max(r["value"] for r in tables[0] if r["state"] == "complete")
    # every trial starts from the run's random state: the best trial's score is the final run's own estimate
    assert model.metrics["estimate"]["score"] == pytest.approx(s["best"]["value"], abs=1e-9)
    assert model.metrics["strategy"].startswith(s["best"]["strategy"])
    assert "cross-validated accuracy" in s["objective"]
    c = s["comparison"]
    assert c["part"] == "test" and c["n"] == model.metrics["test"]["n"] and c["defaults_strategy"] == "auto"
    assert c["difference"] == pytest.approx(c["searched"] - c["defaults"])
    assert c["searched"] == pytest.approx(model.metrics["test"]["accuracy"])
    assert c["ci"][0] <= c["difference"] <= c["ci"][1]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["search"]["best"] == s["best"]
    report = (out / "report.md").read_text()
    assert "## Search" in report and "Against the default settings" in report and (out / "search.png").stat().st_size
    card = (out / "model" / "model_card.md").read_text()
    assert "## Hyperparameter search" in card and f"trial {s['best']['number']}" in card
    assert transferkit.load(out / "model").meta["metrics"]["search"]["best"] == s["best"]
    import yaml

    doc = yaml.safe_load((out / "run.yaml").read_text())  # what `transferkit search --config` reads back
    assert doc["command"] == "search" and doc["data"] == str(colour_folder.resolve())
    assert {k: doc["settings"][k] for k in ("trials", "seed", "strategy", "study", "storage", "backbone")} == \
        {"trials": 4, "seed": 3, "strategy": "linear,finetune", "study": "a",
         "storage": f"sqlite:///{tmp_path / 'search.db'}", "backbone": tiny_backbone}
    assert doc["resolved"]["best_trial"] == s["best"]["number"]
    assert doc["settings"]["space"] == str(out / "space.yaml")  # a space given in Python, kept beside it
    assert yaml.safe_load((out / "space.yaml").read_text()) == FAST
    from typer.testing import CliRunner

    from transferkit.cli import app

    r = CliRunner().invoke(app, ["search", "--config", str(out / "run.yaml"), "--study", "c", "--trials", "2",
                                 "--out", str(tmp_path / "runs" / "c"), "--json"])
    assert r.exit_code == 0, r.output
    again = yaml.safe_load((tmp_path / "runs" / "c" / "run.yaml").read_text())["settings"]
    assert (again["study"], again["trials"], again["space"]) == ("c", 2, doc["settings"]["space"])
    assert {k: v for k, v in again.items() if k not in ("study", "trials")} == \
        {k: v for k, v in doc["settings"].items() if k not in ("study", "trials")}


def test_study_on_other_data_refused(colour_folder, tiny_backbone, tmp_path):
    from transferkit.studies import search

    url = f"sqlite:///{tmp_path / 'search.db'}"
    done = search(colour_folder, trials=2, strategy="linear", worker=True, study="s", storage=url,
                  backbone=tiny_backbone)
    assert done == {"complete": 2, "pruned": 0, "failed": 0}
    # joining the finished study with the same data runs nothing more
    assert search(colour_folder, worker=True, study="s", storage=url, strategy="linear",
                  backbone=tiny_backbone) == {"complete": 0, "pruned": 0, "failed": 0}
    other = tmp_path / "other"
    write_colour_images(other, 12, seed=5)
    with pytest.raises(TransferkitError) as err:
        search(other, trials=2, strategy="linear", worker=True, study="s", storage=url, backbone=tiny_backbone)
    message = str(err.value)
    assert f"Study 's' was made for {colour_folder}" in message and f"this run is for {other}" in message
    with pytest.raises(TransferkitError, match="holds 2 trials; this run asks for 5"):
        search(colour_folder, trials=5, strategy="linear", worker=True, study="s", storage=url,
               backbone=tiny_backbone)
    with pytest.raises(TransferkitError, match="another search space"):
        search(colour_folder, strategy="linear", worker=True, study="s", storage=url, backbone=tiny_backbone,
               space={"linear": {"class_weight": "none"}})
    # other weights written to the same backbone folder make another study
    import shutil

    import torch

    from transferkit.backbones import create_backbone
    from transferkit.backbones.checkpoint import save_backbone

    mine = tmp_path / "backbone"
    shutil.copytree(tiny_backbone, mine)
    assert search(colour_folder, trials=1, strategy="linear", worker=True, study="w", storage=url,
                  backbone=str(mine))["complete"] == 1
    bb = create_backbone(str(mine))
    with torch.no_grad():
        next(bb.parameters()).add_(1.0)
    save_backbone(bb, mine, provenance={"note": "changed"})
    with pytest.raises(TransferkitError, match="another backbone, preprocessing or precision"):
        search(colour_folder, strategy="linear", worker=True, study="w", storage=url, backbone=str(mine))


def worker_command(data: Path, backbone: str, url: str, study: str, trials: int, space: Path, *extra: str,
                   strategy: str = "linear,finetune") -> list:
    return [sys.executable, "-m", "transferkit", "search", str(data), "--backbone", backbone, "--storage", url,
            "--study", study, "--trials", str(trials), "--strategy", strategy, "--space", str(space), "--seed", "0",
            *extra]


@pytest.mark.slow
@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_two_workers_run_exactly_the_trials(database, colour_folder, tiny_backbone, tmp_path, request):
    """`--workers 2` here: this process and one it starts take trials from one study, on a real PostgreSQL server and
    on the default SQLite file; together they finish exactly the 8 trials, each once, with different settings, and
    this process trains the final model."""
    url = request.getfixturevalue("postgres_url") if database == "postgresql" else \
        f"sqlite:///{tmp_path / 'search.db'}"
    space = tmp_path / "space.yaml"
    space.write_text("finetune:\n  epochs: 4\n")
    out = tmp_path / "runs" / "pg"
    r = subprocess.run(worker_command(colour_folder, tiny_backbone, url, "two", 8, space, "--workers", "2",
                                      "--out", str(out), "--json", "--no-explain"),
                       capture_output=True, text=True, timeout=600, env={**os.environ, "TRANSFERKIT_QUIET": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    record = json.loads(r.stdout.strip().splitlines()[-1])
    trials = study_rows(url, "two")
    assert len(trials) == 8 and sorted(t.number for t in trials) == list(range(8))
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2, workers  # both processes took trials
    assert record["trials"] == {"planned": 8, "complete": sum(t.state.name == "COMPLETE" for t in trials),
                                "pruned": sum(t.state.name == "PRUNED" for t in trials), "failed": 0, "retried": 0,
                                "queued": 0}
    assert record["workers"] == 2 and (out / "model" / "model.safetensors").is_file()
    settings = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(settings)) == len(settings)  # the two workers' samplers do not repeat each other's draws


@pytest.mark.slow
def test_killed_worker_trial_is_failed_and_run_again(colour_folder, tiny_backbone, tmp_path, postgres_url):
    """Two `--worker` processes; one is killed (SIGKILL) in the middle of a trial. The other finds the trial silent
    (3 heartbeats of 1 s), marks it failed, runs its settings again, and finishes the study: 4 finished trials."""
    space = tmp_path / "space.yaml"
    space.write_text("finetune:\n  epochs: 12\n")  # trials of several seconds, so one is caught mid-way
    env = {**os.environ, "TRANSFERKIT_QUIET": "1"}
    cmd = worker_command(colour_folder, tiny_backbone, postgres_url, "kill", 4, space, "--worker", "--heartbeat", "1",
                         "--pruner", "none", strategy="finetune")
    victim = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    survivor = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    mark = f"{socket.gethostname()}:{victim.pid}"
    killed = None
    try:
        deadline = time.monotonic() + 240
        while killed is None and time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                running = [t for t in study_rows(postgres_url, "kill")
                           if t.state.name == "RUNNING" and t.user_attrs.get("worker") == mark]
            except KeyError:  # the study is not made yet
                continue
            if running:  # fine-tuning trials: seconds long
                time.sleep(1.0)
                os.kill(victim.pid, signal.SIGKILL)
                killed = running[0].number
        assert killed is not None, "the victim never ran a trial"
        victim.wait(timeout=30)
        _, err = survivor.communicate(timeout=300)
        assert survivor.returncode == 0, err.decode()[-2000:]
    finally:
        for p in (victim, survivor):
            if p.poll() is None:
                p.kill()
    trials = study_rows(postgres_url, "kill")
    by_number = {t.number: t for t in trials}
    assert by_number[killed].state.name == "FAIL"
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE"
    assert retries[0].params == by_number[killed].params
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 4
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]


def test_storage_places_and_passwords_refused_or_hidden(colour_folder, tmp_path):
    from transferkit.studies import search
    from transferkit.studies.storage import hide, shown, without_password

    out = tmp_path / "runs" / "x"
    with pytest.raises(TransferkitError, match="lies inside --out"):
        search(colour_folder, trials=2, out=out, storage=f"sqlite:///{out / 'search.db'}")
    with pytest.raises(TransferkitError, match="lies inside the data folder"):
        search(colour_folder, trials=2, out=out, storage=f"sqlite:///{colour_folder / 'red' / 'search.db'}")
    with pytest.raises(TransferkitError, match="does not exist"):
        search(tmp_path / "no-such-data", trials=2, out=out)
    assert not (tmp_path / "runs").exists() and not list(colour_folder.rglob("*.db"))
    with pytest.raises(TransferkitError, match="at most 512"):
        search(colour_folder, trials=2, out=out, study="x" * 600)
    # a password holding '/' or '@', or given in the query, never shows
    for url in ("postgresql://tk:pa/ss@127.0.0.1:5/tk", "postgresql://tk:p@ss@h:1/d",
                "postgresql://tk@h/d?sslmode=disable&password=pa/ss"):
        assert "pa/ss" not in shown(url) and "p@ss" not in shown(url) and "***" in shown(url)
        # run.yaml's storage: no password, not even starred, so a rerun's driver asks PGPASSWORD or ~/.pgpass
        assert "pa/ss" not in without_password(url) and "p@ss" not in without_password(url)
        assert "***" not in without_password(url) and "password" not in without_password(url)
        assert "pa/ss" not in hide(f"failed: {url}", url) and "p@ss" not in hide(f"failed: {url}", url)
