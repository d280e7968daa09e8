"""The run folder as one unit (hostile-input issue): --out checked before any work and held by one run at a time, the
outputs swapped in whole (a kill at any point leaves the old run's folder or the new one's), --resume only onto the
same data and settings, a full disk answered in one line, and a feature cache that never serves a damaged entry."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import transferkit
from transferkit.errors import TransferkitError

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFERKIT_QUIET": "1", "PYTHONPATH": str(ROOT)}


def _fit(data: Path, backbone: str, out: Path, **kw):
    kw.setdefault("strategy", "linear")
    return transferkit.fit(str(data), backbone=backbone, out=out, seed=0, **kw)


def _beside(out: Path) -> list[str]:
    """What lies in ``out``'s folder that belongs to runs into ``out``."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith((out.name, f".{out.name}")))


def _run_ids(out: Path) -> set[str]:
    """The run id each file of a run folder carries (metrics.json, report.md, the bundle's config.json)."""
    ids = {json.loads((out / "metrics.json").read_text())["run_id"],
           json.loads((out / "model" / "config.json").read_text())["run_id"]}
    ids |= set(re.findall(r"Run `([0-9a-f]{12})`", (out / "report.md").read_text()))
    return ids


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "transferkit", *args], capture_output=True, text=True,
                          env=env or ENV, timeout=300)


def _one_line(r: subprocess.CompletedProcess, *fragments: str) -> None:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    for f in fragments:
        assert f in r.stderr.replace("\n", " "), r.stderr


# -- --out checked before any work --------------------------------------------------------------------------------

def test_out_that_is_a_file_or_lies_inside_one_is_refused_before_any_work(colour_splits, tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("keep me")
    r = _cli("fit", str(colour_splits), "--backbone", "no-such-backbone", "--out", str(file))
    _one_line(r, f"--out {file} is a file, not a folder")  # before the backbone is even looked up
    assert file.read_text() == "keep me"
    with pytest.raises(TransferkitError, match=r"lies inside .*notes.txt, which is a file"):
        _fit(colour_splits, "no-such-backbone", file / "run")
    assert file.read_text() == "keep me"


def test_out_inside_the_data_folder_is_refused_and_nothing_lands_there(colour_splits, tmp_path):
    before = sorted(p.relative_to(colour_splits) for p in colour_splits.rglob("*"))
    inside = colour_splits / "train" / "run"
    r = _cli("fit", str(colour_splits), "--backbone", "no-such-backbone", "--out", str(inside))
    _one_line(r, f"--out {inside} lies inside the data folder {colour_splits}: the next run would read this run's "
                 "files as data; choose a folder outside it (e.g. --out runs/exp).")
    with pytest.raises(TransferkitError, match="lies inside the data folder"):
        transferkit.pretrain(colour_splits, arch="resnet18", out=colour_splits / "pre")
    assert sorted(p.relative_to(colour_splits) for p in colour_splits.rglob("*")) == before, "not even a lock file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_out_in_a_folder_this_user_cannot_write_is_refused(colour_splits, tmp_path):
    locked_dir = tmp_path / "ro"
    locked_dir.mkdir()
    locked_dir.chmod(0o555)
    try:
        with pytest.raises(TransferkitError, match=r"ro is not writable here: choose a folder you can write to"):
            _fit(colour_splits, "no-such-backbone", locked_dir / "run")
    finally:
        locked_dir.chmod(0o755)


def test_a_folder_that_is_not_a_run_is_never_replaced(colour_splits, tiny_backbone, tmp_path):
    out = tmp_path / "Documents"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(TransferkitError, match=r"holds files that are not a transferkit run's \(e.g. thesis.tex\)"):
        _fit(colour_splits, tiny_backbone, out)
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_the_current_folder_or_one_holding_it_is_refused_before_any_work(colour_splits, tmp_path, monkeypatch):
    here = tmp_path / "work"
    here.mkdir()
    (here / "keep.txt").write_text("mine")
    monkeypatch.chdir(here)
    for out, what in ((".", "is the current folder:"), (str(here), "is the current folder:"),
                      ("..", "is the current folder or holds it:")):
        with pytest.raises(TransferkitError, match=rf"^--out {re.escape(str(Path(out).resolve()))} {what} a run "
                                                    r"replaces its folder whole, so choose a folder inside it"):
            _fit(colour_splits, "no-such-backbone", Path(out))
    r = subprocess.run([sys.executable, "-m", "transferkit", "fit", str(colour_splits), "--backbone",
                        "no-such-backbone", "--out", "."], capture_output=True, text=True, env=ENV, cwd=here,
                       timeout=300)
    _one_line(r, f"--out {here} is the current folder")
    with pytest.raises(TransferkitError, match="is the current folder"):
        transferkit.pretrain(str(colour_splits), arch="test_efficientnet", out=".", steps=1)
    assert sorted(p.name for p in here.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["split-colours", "work"]  # no lock, no temporary folder


def test_a_relative_out_lands_where_it_names(colour_splits, tiny_backbone, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = _fit(colour_splits, tiny_backbone, Path("runs/../run"))
    assert (tmp_path / "run" / "model" / "config.json").is_file() and len(_run_ids(tmp_path / "run")) == 1
    assert model.metrics["run_id"] in _run_ids(tmp_path / "run")
    assert _beside(tmp_path / "run") == [".run.lock", "run"] and not (tmp_path / "runs").exists()


def test_a_rerun_keeps_what_the_previous_run_did_not_write(colour_splits, tiny_backbone, tmp_path, monkeypatch,
                                                           capsys):
    from transferkit.rundir import MANIFEST

    out = tmp_path / "run"
    _fit(colour_splits, tiny_backbone, out)
    written = json.loads((out / MANIFEST).read_text())["written"]
    assert {"metrics.json", "model", "report.md"} <= set(written) and MANIFEST not in written
    (out / "notes.txt").write_text("lr too high?")
    (out / "eval").mkdir()
    (out / "eval" / "metrics.json").write_text("{}")  # as `evaluate --out run/eval` leaves it
    (out / "report.md").write_text("edited")  # the run's own file: the next run writes it anew
    monkeypatch.setenv("TRANSFERKIT_QUIET", "0")
    capsys.readouterr()
    _fit(colour_splits, tiny_backbone, out)
    assert f"{out}: kept eval, notes.txt from the previous folder (not written by a run)" in \
        capsys.readouterr().err.replace("\n", "")
    assert (out / "notes.txt").read_text() == "lr too high?" and (out / "eval" / "metrics.json").read_text() == "{}"
    assert (out / "report.md").read_text() != "edited" and len(_run_ids(out)) == 1
    assert sorted(json.loads((out / MANIFEST).read_text())["written"]) == sorted(written)
    # a folder from a transferkit without the record: what the new run does not write is kept
    (out / MANIFEST).unlink()
    (out / "plot-old.png").write_bytes(b"made by hand")
    _fit(colour_splits, tiny_backbone, out)
    assert {"notes.txt", "eval", "plot-old.png"} <= {p.name for p in out.iterdir()}
    assert _beside(out) == [".run.lock", "run"]


def test_a_pretraining_into_a_folder_that_is_not_a_run_is_refused(colour_splits, tmp_path):
    out = tmp_path / "Documents"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(TransferkitError, match=r"holds files that are not a transferkit run's \(e.g. thesis.tex\)"):
        transferkit.pretrain(str(colour_splits), arch="test_efficientnet", out=out, steps=1)
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


# -- one run at a time ----------------------------------------------------------------------------------------

def test_a_second_run_into_a_held_out_is_refused_at_once(colour_splits, tiny_backbone, tmp_path):
    from transferkit.rundir import locked

    out = tmp_path / "run"
    with locked(out):  # another run holds it (this process: the lock is per open file, so it conflicts too)
        with pytest.raises(TransferkitError, match=rf"{out} is in use by another run \(pid {os.getpid()}\): wait for "
                                                    "it to finish or choose another --out"):
            _fit(colour_splits, tiny_backbone, out)
        assert not out.exists()  # the CLI's one line: test_two_runs_at_once_in_two_processes_one_is_refused
        with pytest.raises(TransferkitError, match="is in use by another run"):
            transferkit.compare(str(colour_splits), strategies="linear,scratch", out=out)
        with pytest.raises(TransferkitError, match="is in use by another run"):
            transferkit.pretrain(str(colour_splits), arch="test_efficientnet", out=out, steps=1)
    _fit(colour_splits, tiny_backbone, out)  # released: the next run goes ahead
    assert (out / "model" / "config.json").is_file()


def test_two_runs_at_once_in_two_processes_one_is_refused(colour_splits, tiny_backbone, tmp_path):
    out = tmp_path / "run"
    # another process holds --out (as a run does, for its whole length) while a second run starts
    hold = ("import sys, time\nfrom transferkit.rundir import locked\n"
            "with locked(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out)], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held", holder.stderr.read()
        second = _cli("fit", str(colour_splits), "--backbone", tiny_backbone, "--strategy", "linear", "--out",
                      str(out))
        _one_line(second, f"is in use by another run (pid {holder.pid})")
        assert not out.exists()
    finally:
        holder.kill()
        holder.communicate(timeout=30)
    _fit(colour_splits, tiny_backbone, out)  # the lock goes with the process that held it
    assert len(_run_ids(out)) == 1


# -- kill -9 at any point: the old folder or the new one, never a mix ------------------------------------------------

CRASH = r'''
import os, sys
import transferkit
point, data, backbone, out = sys.argv[1:5]

def die(*a, **k):
    os._exit(9)  # as abrupt as kill -9: no cleanup, no finally

if point == "training":  # after the first epoch's checkpoint
    import transferkit.engine.trainer as t
    save = t.save_checkpoint
    t.save_checkpoint = lambda *a, **k: (save(*a, **k), die())
elif point == "writing":  # metrics.json and the plots written, report.md not yet
    import transferkit.evaluation.report as r
    r.render_markdown = die
elif point == "swapped":  # the new folder in place, the old one not yet deleted
    import transferkit.io as io
    swap = io.exchange
    io.exchange = lambda a, b: (swap(a, b), die())
elif point == "between-renames":  # no atomic exchange: killed after moving the old folder aside
    import shutil
    import transferkit.io as io
    io.exchange = lambda a, b: False
    real = os.replace
    def replace(a, b):
        real(a, b)
        if ".old-" in str(b):
            die()
    io.os = type(sys)("os_shim")
    io.os.__dict__.update(os.__dict__)
    io.os.replace = replace
transferkit.fit(data, backbone=backbone, out=out, strategy=sys.argv[5], epochs=2, seed=0) if sys.argv[5] != "linear" \
    else transferkit.fit(data, backbone=backbone, out=out, strategy="linear", seed=0)
'''


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_backbone) -> tuple[Path, Path]:
    """Data, and a finished run on them (each test copies it: the previous run in its --out)."""
    from conftest import write_colour_images

    root = tmp_path_factory.mktemp("finished")
    write_colour_images(root / "data" / "train", 10, seed=1)
    write_colour_images(root / "data" / "test", 4, seed=2)
    _fit(root / "data", tiny_backbone, root / "run")
    return root / "data", root / "run"


@pytest.mark.parametrize("point,strategy,new", [("training", "finetune", False), ("writing", "linear", False),
                                                ("swapped", "linear", True), ("between-renames", "linear", False)])
def test_kill_at_any_point_leaves_the_old_run_or_the_new_one(finished, tiny_backbone, tmp_path, point, strategy,
                                                             new, capsys, monkeypatch):
    colour_splits, out = finished[0], tmp_path / "run"
    shutil.copytree(finished[1], out)
    (old_id,) = _run_ids(out)
    r = subprocess.run([sys.executable, "-c", CRASH, point, str(colour_splits), tiny_backbone, str(out), strategy],
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 9, r.stderr
    if point == "between-renames":
        assert not out.exists()  # the one moment of the two-rename fallback; the next run puts the old one back
        monkeypatch.setenv("TRANSFERKIT_QUIET", "0")
        from transferkit.rundir import tidy_leftovers

        assert any("put back the previous run's folder" in n for n in tidy_leftovers(out))
    ids = _run_ids(out)
    assert len(ids) == 1, f"a mixed folder: {ids}"
    assert (ids != {old_id}) == new
    # the next run tidies what the killed one left beside the folder, says so, and ends complete
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".run.tmp-"))
    assert bool(left) == (point in ("writing", "swapped"))
    if point == "between-renames":
        return
    monkeypatch.setenv("TRANSFERKIT_QUIET", "0")
    _fit(colour_splits, tiny_backbone, out)
    if left:
        assert f"removed {left[0]}, left by an interrupted run" in capsys.readouterr().err.replace("\n", "")
    assert len(_run_ids(out)) == 1 and _run_ids(out) != ids
    assert _beside(out) == [".run.lock", "run"]


# -- --resume only onto the same data and settings -------------------------------------------------------------------

def _interrupted(data: Path, backbone: str, out: Path, monkeypatch, epochs: int = 3) -> None:
    """A finetune run that crashes after its first epoch's checkpoint (in this process)."""
    import transferkit.engine.trainer as trainer

    save = trainer.save_checkpoint

    def save_then_crash(*a, **k):
        save(*a, **k)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(trainer, "save_checkpoint", save_then_crash)
        with pytest.raises(KeyboardInterrupt):
            _fit(data, backbone, out, strategy="finetune", epochs=epochs)
    assert (out.parent / f".{out.name}.work" / "run.json").is_file()


def test_resume_with_other_settings_or_data_says_what_differs(colour_splits, tiny_backbone, tmp_path, monkeypatch):
    from PIL import Image

    out = tmp_path / "run"
    _interrupted(colour_splits, tiny_backbone, out, monkeypatch)
    with pytest.raises(TransferkitError, match=r"^--resume: the checkpoint in .*\.run\.work was trained with epochs=3 "
                                               r"\(now 5\); rerun without --resume, or with the same settings and "
                                               r"data\.$"):
        _fit(colour_splits, tiny_backbone, out, strategy="finetune", epochs=5, resume=True)
    with pytest.raises(TransferkitError, match=r"with image_size=None \(now 48\) and with preprocess.input_size="):
        _fit(colour_splits, tiny_backbone, out, strategy="finetune", epochs=3, resume=True, image_size=48)
    # other data: one image changed, then one class more
    changed = tmp_path / "changed"
    shutil.copytree(colour_splits, changed)
    img = next((changed / "train" / "red").glob("*.png"))
    Image.new("RGB", (24, 24), (0, 0, 0)).save(img)
    with pytest.raises(TransferkitError, match=r"trained on other data \(1 example differs\); rerun without --resume"):
        _fit(changed, tiny_backbone, out, strategy="finetune", epochs=3, resume=True)
    shutil.copytree(changed / "train" / "red", changed / "train" / "black")
    shutil.copytree(changed / "test" / "red", changed / "test" / "black")
    with pytest.raises(TransferkitError, match=r"with classes=\['blue', 'green', 'red'\] \(now \['black', 'blue', "
                                               r"'green', 'red'\]\) and on other data \(15 examples differ\)"):
        _fit(changed, tiny_backbone, out, strategy="finetune", epochs=3, resume=True)
    # the same settings and data: it continues, and the checkpoints go once the folder is in place
    model = _fit(colour_splits, tiny_backbone, out, strategy="finetune", epochs=3, resume=True)
    assert len(model.metrics["history"]["epochs"]) == 3
    assert not (tmp_path / ".run.work").exists() and len(_run_ids(out)) == 1


def test_resume_onto_a_checkpoint_without_a_record_and_another_class_count_is_one_line(colour_splits, tiny_backbone,
                                                                                     tmp_path, monkeypatch):
    out = tmp_path / "run"
    _interrupted(colour_splits, tiny_backbone, out, monkeypatch)
    (tmp_path / ".run.work" / "run.json").unlink()  # as an older transferkit left it
    more = tmp_path / "more"
    shutil.copytree(colour_splits, more)
    shutil.copytree(more / "train" / "red", more / "train" / "black")
    shutil.copytree(more / "test" / "red", more / "test" / "black")
    with pytest.raises(TransferkitError, match=r"^--resume: the checkpoint .*last.pt does not fit this run \(.*size "
                                               r"mismatch.*\); rerun without --resume"):
        _fit(more, tiny_backbone, out, strategy="finetune", epochs=3, resume=True)


@pytest.mark.parametrize("content", ["garbage", "no-best"])
def test_a_damaged_checkpoint_is_one_line(tmp_path, content):
    import torch

    from transferkit.engine.trainer import History, resume_checkpoint

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    ckpt = tmp_path / "last.pt"
    if content == "garbage":
        ckpt.write_bytes(b"not a checkpoint at all")
    else:  # a checkpoint written before the best weights were kept in it
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(),
                    "history": History().to_dict()}, ckpt)
    with pytest.raises(TransferkitError, match=rf"^--resume: the checkpoint {ckpt} does not fit this run \(.+\); "
                                                "rerun without --resume"):
        resume_checkpoint(ckpt, model, optimizer, scheduler, dict)


# -- a full disk -------------------------------------------------------------------------------------------------

def test_a_full_disk_while_writing_a_checkpoint_is_one_line_and_leaves_no_tmp(colour_splits, tiny_backbone, tmp_path,
                                                                            monkeypatch):
    import torch

    out = tmp_path / "run"
    _fit(colour_splits, tiny_backbone, out)
    before = _run_ids(out)

    def full(state, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(TransferkitError) as e:
        _fit(colour_splits, tiny_backbone, out, strategy="finetune", epochs=2)
    work = tmp_path / ".run.work" / "checkpoints-finetune"
    assert str(e.value) == (f"No space left on the disk of {work} while writing a checkpoint ({work}/last.pt): free "
                            "space and rerun with --resume (it continues from the last checkpoint).")
    assert not list(tmp_path.rglob("*.tmp")) and _run_ids(out) == before
    assert not (work / "last.pt").exists()  # no half-written checkpoint for --resume to stumble on


def test_a_full_disk_while_writing_the_outputs_keeps_the_old_folder(colour_splits, tiny_backbone, tmp_path,
                                                                  monkeypatch):
    import transferkit.evaluation.report as report

    out = tmp_path / "run"
    _fit(colour_splits, tiny_backbone, out)
    before = _run_ids(out)

    def full(history, path, *title_and_score):
        Path(path).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(report, "learning_curve_png", full)
    with pytest.raises(TransferkitError, match=r"^No space left on the disk of .* while writing the run folder "
                                               r"\(.*learning_curve.png\): free space and rerun with --resume"):
        _fit(colour_splits, tiny_backbone, out)
    assert _run_ids(out) == before
    # no half-written folder left; what --resume continues from stays
    assert _beside(out) == [".run.lock", ".run.work", "run"]


# -- the feature cache -------------------------------------------------------------------------------------------

def _probs(model, colour_splits: Path):
    return model.predict_proba(sorted((colour_splits / "test").rglob("*.png")))


def test_a_cache_root_that_is_a_file_means_no_cache_with_a_warning(colour_splits, tiny_backbone, tmp_path,
                                                                   monkeypatch, capsys):
    import numpy as np

    reference = _probs(_fit(colour_splits, tiny_backbone, tmp_path / "a", cache=False), colour_splits)
    root = tmp_path / "cache-file"
    root.write_text("not a folder")
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(root))
    model = _fit(colour_splits, tiny_backbone, tmp_path / "b")
    err = capsys.readouterr().err.replace("\n", "")
    assert f"warning: feature cache {root}/features cannot be used" in err and "set TRANSFERKIT_CACHE to a folder" \
        in err
    assert np.allclose(_probs(model, colour_splits), reference) and root.read_text() == "not a folder"


@pytest.fixture(scope="module")
def cached(tmp_path_factory, tiny_backbone) -> dict:
    """Data, a run on them without the cache (its test-set probabilities, its folder) and a filled feature cache
    (each test copies it, then damages its one entry)."""
    from conftest import write_colour_images

    root = tmp_path_factory.mktemp("cached")
    write_colour_images(root / "data" / "train", 10, seed=1)
    write_colour_images(root / "data" / "test", 4, seed=2)
    reference = _fit(root / "data", tiny_backbone, root / "a", cache=False)
    with pytest.MonkeyPatch.context() as m:
        m.setenv("TRANSFERKIT_CACHE", str(root / "cache"))
        _fit(root / "data", tiny_backbone, root / "b")  # fills the cache
    return {"data": root / "data", "probs": _probs(reference, root / "data"), "run": root / "a",
            "cache": root / "cache"}


@pytest.mark.parametrize("damage", ["wrong-shape", "all-zero"])  # truncated, checksum-less: test_read_entry_refuses
def test_a_damaged_cache_entry_is_recomputed_never_used(cached, tiny_backbone, tmp_path, monkeypatch, capsys, damage):
    import numpy as np
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    data = cached["data"]
    shutil.copytree(cached["cache"], tmp_path / "cache")
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))
    entries = sorted((tmp_path / "cache" / "features").glob("*.safetensors"))
    assert len(entries) == 1  # the training split (no validation split: small data)
    with safe_open(str(entries[0]), "pt") as f:
        meta, feats = f.metadata(), f.get_tensor("features").clone()  # not a view of the file changed below
    assert meta["shape"] == f"{feats.shape[0]},{feats.shape[1]}" and meta["dtype"] == "float32"
    if damage == "wrong-shape":
        bad = torch.zeros(feats.shape[0], feats.shape[1] + 1)
        save_file({"features": bad}, str(entries[0]), metadata={**meta, "shape": f"{feats.shape[0]},{bad.shape[1]}"})
        note = f"has shape ({feats.shape[0]}, {feats.shape[1] + 1}), not ({feats.shape[0]}, {feats.shape[1]})"
    else:
        save_file({"features": torch.zeros_like(feats)}, str(entries[0]), metadata=meta)
        note = "does not match its checksum"
    monkeypatch.setenv("TRANSFERKIT_QUIET", "0")
    capsys.readouterr()
    model = _fit(data, tiny_backbone, tmp_path / "c")
    assert f"feature cache: {entries[0].name} {note}: computing the features again" in \
        capsys.readouterr().err.replace("\n", "")
    assert np.allclose(_probs(model, data), cached["probs"])
    assert model.metrics["test"]["accuracy"] == transferkit.load(cached["run"] / "model").evaluate(
        str(data / "test"))["accuracy"]
    with safe_open(str(entries[0]), "pt") as f:  # rewritten whole
        assert torch.equal(f.get_tensor("features"), feats)


def test_read_entry_refuses_truncated_and_checksum_less_entries(tmp_path):
    import torch
    from safetensors.torch import save_file

    from transferkit.engine.features import read_entry, write_entry

    feats = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    good = tmp_path / "good.safetensors"
    write_entry(good, feats)
    assert torch.equal(read_entry(good, 3, 4)[0], feats)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:100])
    assert read_entry(truncated, 3, 4) == (None, "is damaged")
    bare = tmp_path / "bare.safetensors"
    save_file({"features": feats}, str(bare))
    assert read_entry(bare, 3, 4) == (None, "carries no checksum")
