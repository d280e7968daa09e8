"""run.yaml: every run writes its settings, and ``transferkit fit --config run.yaml`` runs it again exactly."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from transferkit.cli import app
from transferkit.runfile import read_settings, settings_file

runner = CliRunner()


def _fit(*args: str):
    r = runner.invoke(app, ["fit", *args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout.strip().splitlines()[-1])


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_fit_config_reruns_the_run_exactly_and_flags_override(colour_splits, tiny_backbone, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths in the first run: the file must hold them absolute
    data = Path("data")
    data.symlink_to(colour_splits)
    first = tmp_path / "first"
    _fit(str(data), "--backbone", tiny_backbone, "--strategy", "finetune", "--epochs", "2", "--seed", "3",
         "--out", "first")
    doc = yaml.safe_load((first / "run.yaml").read_text())
    assert doc["command"] == "fit" and doc["data"] == str(colour_splits.resolve())
    s = doc["settings"]
    assert (s["backbone"], s["strategy"], s["epochs"], s["seed"], s["lr"]) == (tiny_backbone, "finetune", 2, 3, None)
    assert s["precision"] in ("bf16", "fp16", "no")  # "auto" is written as what it came to
    assert "out" not in s and "resume" not in s
    assert doc["resolved"]["options"]["epochs"] == 2 and doc["resolved"]["task"] == "image-classification"

    monkeypatch.chdir(tmp_path / "first")  # from another folder, with DATA left out, the run folder as --config
    _fit("--config", ".", "--out", str(tmp_path / "again"))
    again = _metrics(tmp_path / "again")
    assert again["test"] == _metrics(first)["test"]  # every score and the log-loss, to the last digit
    curve = [{k: v for k, v in e.items() if k in ("train_loss", "train_acc", "val_loss", "lr")}
             for e in _metrics(first)["history"]["epochs"]]
    assert [{k: e[k] for k in c} for c, e in zip(curve, again["history"]["epochs"])] == curve
    assert yaml.safe_load((tmp_path / "again" / "run.yaml").read_text())["settings"] == s

    _fit("--config", "run.yaml", "--seed", "0", "--epochs", "1", "--out", str(tmp_path / "other"))
    other = yaml.safe_load((tmp_path / "other" / "run.yaml").read_text())["settings"]
    assert (other["seed"], other["epochs"]) == (0, 1)  # the flags won
    assert {k: v for k, v in other.items() if k not in ("seed", "epochs")} == \
        {k: v for k, v in s.items() if k not in ("seed", "epochs")}
    assert len(_metrics(tmp_path / "other")["history"]["epochs"]) == 1

    # a boolean flag beside the file wins both ways; another strategy drops the file's strategy options, saying so
    r = runner.invoke(app, ["fit", "--config", "run.yaml", "--strategy", "linear", "--explain", "--skip-bad",
                            "--out", str(tmp_path / "probe"), "--json"])
    assert r.exit_code == 0, r.output
    assert "--strategy linear replaces the file's finetune: its options (epochs 2) are left out" in r.output
    probe = yaml.safe_load((tmp_path / "probe" / "run.yaml").read_text())["settings"]
    assert (probe["strategy"], probe["epochs"], probe["explain"], probe["skip_bad"]) == ("linear", None, True, True)


def test_pretrain_config_reruns_to_the_same_weights(colour_folder, tmp_path):
    from safetensors.torch import load_file

    args = ["--arch", "timm:test_efficientnet", "--image-size", "32", "--steps", "3", "--batch-size", "8",
            "--precision", "no", "--workers", "0", "--json"]
    r = runner.invoke(app, ["pretrain", str(colour_folder), *args, "--out", str(tmp_path / "first")])
    assert r.exit_code == 0, r.output
    doc = yaml.safe_load((tmp_path / "first" / "run.yaml").read_text())
    assert doc["command"] == "pretrain" and doc["settings"]["steps"] == 3 and doc["resolved"]["total_steps"] == 3
    r = runner.invoke(app, ["pretrain", "--config", str(tmp_path / "first" / "run.yaml"), "--json",
                            "--out", str(tmp_path / "again")])
    assert r.exit_code == 0, r.output
    first, again = (load_file(str(tmp_path / d / "backbone.safetensors")) for d in ("first", "again"))
    assert first.keys() == again.keys() and all((first[k] == again[k]).all() for k in first)
    r = runner.invoke(app, ["fit", "--config", str(tmp_path / "first" / "run.yaml")])
    assert r.exit_code == 2 and "written by `transferkit pretrain`, not fit" in r.output


def test_a_bad_config_is_one_line_per_problem_before_any_work(colour_splits, tmp_path):
    def refused(text: str, *args: str) -> list[str]:
        path = tmp_path / "run.yaml"
        path.write_text(text)
        r = runner.invoke(app, ["fit", "--config", str(path), "--out", str(tmp_path / "out"), *args])
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output
        assert not (tmp_path / "out").exists()
        return r.output.strip().splitlines()

    lines = refused(f"command: fit\ndata: {colour_splits}\nsettings:\n  epoch: 3\n  lr: fast\n  seed: 1.5\n"
                    "  strategy: finetune\n")
    assert len(lines) == 3
    assert "unknown setting 'epoch' (closest: 'epochs')" in lines[0]
    assert "lr: Input should be a valid number" in lines[1]
    assert "seed: Input should be a valid integer" in lines[2]

    assert "written by `transferkit pretrain`, not fit" in refused("command: pretrain\nsettings: {}\n")[0]
    assert "not valid YAML (line 3)" in refused("settings:\n  seed: [1\n")[0]
    assert "not a run file" in refused("- a\n- b\n")[0]
    assert "unknown key 'setings'" in refused("setings: {}\n")[0]
    assert "strategy_options: expected a mapping" in refused(f"data: {colour_splits}\nsettings:\n"
                                                             "  strategy_options: 3\n")[0]
    assert "records no data path" in refused("settings: {strategy: linear}\n")[0]
    lines = refused(f"data: {colour_splits}\nsettings:\n  strategy: finetune\n  strategy_options: {{warmup: 2}}\n")
    assert "has no option 'warmup'" in lines[-1]  # the strategy's own check names its options

    lines = refused(f"data: {colour_splits}\nsettings:\n  strategy: null\n  backbone: [a, b]\n  seed: {{x: 1}}\n")
    assert "strategy: null is not a value here" in lines[0] and "(auto)" in lines[0]
    assert "backbone: expected one value, got a list" in lines[1] and "comma-separated" in lines[1]
    assert "seed: expected one value, got a dict" in lines[2]
    lines = refused(f"data: {colour_splits}\nsettings:\n  strategy: auto\n  epochs: 3\n  precision: no\n"
                    "  strategy_options: {1: 2}\n")
    assert "precision: expected a value, got false" in lines[0] and "quote a word such as 'no'" in lines[0]
    assert "strategy_options: every key must be an option's name (got '1')" in lines[1]
    assert "epochs, strategy_options: set a named strategy's options, but the strategy is auto" in lines[2]
    assert "precision 'bogus' is unknown: choose auto, bf16, fp16 or no" in \
        refused(f"data: {colour_splits}\nsettings:\n  precision: bogus\n")[0]
    for command in ("fit", "pretrain", "compare"):  # the flag, checked before any data is read
        r = runner.invoke(app, [command, str(colour_splits), "--precision", "bf17", "--out", str(tmp_path / "p")])
        assert r.exit_code == 2 and "precision 'bf17' is unknown" in r.output and "Traceback" not in r.output
    assert "command: expected a command name such as fit, got a list" in refused("command: [1]\nsettings: {}\n")[0]
    assert "data: expected the data's path, got an empty text" in refused("data: ''\nsettings: {}\n")[0]
    assert "data: " + str(tmp_path / "nowhere") + " does not exist" in refused("data: nowhere\nsettings: {}\n")[0]
    # compare passes the options it has no flags for on to its runs, where they are checked
    path = tmp_path / "cmp.yaml"
    path.write_text(f"command: compare\ndata: {colour_splits}\nsettings:\n  strategies: linear,finetune\n"
                    "  fit_options: {warmup: 2}\n")
    r = runner.invoke(app, ["compare", "--config", str(path), "--out", str(tmp_path / "cmp")])
    assert r.exit_code == 2 and "warmup" in r.output and "Traceback" not in r.output, r.output

    r = runner.invoke(app, ["fit", "--config", str(tmp_path / "none.yaml")])
    assert r.exit_code == 2 and "no such file" in r.output
    r = runner.invoke(app, ["fit"])
    assert r.exit_code == 2 and "Missing DATA" in r.output


def test_settings_file_round_trip_and_version_note(tmp_path):
    text = settings_file("fit", None, {"seed": 2, "image_size": 64, "path": Path("/x")}, {"strategy": "linear"})
    path = tmp_path / "run.yaml"
    path.write_bytes(text)
    assert "give DATA beside --config" in text.decode()  # data given in memory
    data, settings, note = read_settings(path, "fit")
    assert (data, settings, note) == (None, {"seed": 2, "image_size": 64, "path": "/x"}, None)
    path.write_text(text.decode().replace("transferkit: ", "transferkit: 0.0.1 #"))
    assert "written by transferkit 0.0.1" in read_settings(path, "fit")[2]
