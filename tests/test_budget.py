"""``--budget`` bounds the whole run: how it is split (reading, training, the scratch baseline, scoring, the report),
and ``auto`` stopping a fine-tuning run that cannot catch the probe. No timing thresholds: what is checked is the
plan and where each part's time comes from, not how fast this machine is."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

import transferkit


def test_the_plan_keeps_scoring_and_the_report_back_and_shares_training_with_scratch():
    from transferkit.tasks.budget import REPORT_SECONDS, plan_budget

    t_start = time.monotonic() - 10.0  # ten seconds went on reading the data
    plan = plan_budget(120.0, t_start, scoring_s=6.0, scratch=False)
    assert plan.spent_s == pytest.approx(10.0, abs=0.5)
    assert plan.scoring_s == 6.0 and plan.report_s == REPORT_SECONDS and plan.scratch_s == 0.0
    assert plan.train_s == pytest.approx(120 - 10 - 6 - REPORT_SECONDS, abs=0.5)
    assert plan.end == pytest.approx(t_start + 120.0)
    assert plan.train_deadline <= plan.end - plan.scoring_s - plan.report_s + 1e-6

    shared = plan_budget(120.0, t_start, scoring_s=6.0, scratch=True)
    assert shared.scoring_s == 12.0, "the scratch baseline is scored too"
    assert shared.train_s == shared.scratch_s == pytest.approx((120 - 10 - 12 - REPORT_SECONDS) / 2, abs=0.5)
    assert "for the scratch baseline" in shared.describe()

    # a budget already spent on reading leaves no training time: the strategies then train their minimum
    late = plan_budget(5.0, time.monotonic() - 8.0, scoring_s=1.0, scratch=True)
    assert late.train_s == late.scratch_s == 0.0


def test_a_budgeted_run_records_its_split_and_gives_scratch_the_same_training_time(colour_splits, tiny_backbone,
                                                                                  tmp_path):
    out = tmp_path / "run"
    model = transferkit.fit(colour_splits, backbone=tiny_backbone, strategy="finetune", epochs=500, patience=1000,
                            budget="20s", scratch_baseline=True, out=out)
    m = model.metrics
    plan = m["budget"]
    assert plan["requested_s"] == 20 and plan["scoring_s"] > 0 and plan["train_s"] == plan["scratch_s"] > 0
    # 500 epochs do not fit in 20 s: each planned as many as its share allows (or the engine stopped it)
    assert m["details"]["planned_epochs"] < 500 and len(m["history"]["epochs"]) < 500
    assert m["scratch_baseline"]["epochs"] < 500
    assert json.loads((out / "metrics.json").read_text())["budget"] == plan
    report = (out / "report.md").read_text()
    assert "- Budget: 20 s for the whole run" in report and "scratch baseline" in report


def test_a_budget_shorter_than_one_epoch_trains_the_steps_that_fit_and_ends_on_time():
    from types import SimpleNamespace

    from transferkit.strategies.base import schedule_within_budget

    task = SimpleNamespace(deadline=time.monotonic() + 10.0, seconds_left=lambda: 10.0)
    # one epoch (50 steps) takes 100 s, 9 s are usable: 4 steps, the schedule complete at the last, checked per step
    assert schedule_within_budget(task, 1, 100.0, 50, warmup_steps=25) == (4, 1, "step")
    # an epoch that fits, or several planned: whole epochs, checked before each
    assert schedule_within_budget(task, 1, 5.0, 50, warmup_steps=25) == (50, 25, "epoch")
    assert schedule_within_budget(task, 3, 2.0, 50, warmup_steps=25) == (150, 25, "epoch")
    no_budget = SimpleNamespace(deadline=None, seconds_left=lambda: float("inf"))
    assert schedule_within_budget(no_budget, 1, None, 50, warmup_steps=25) == (50, 25, "epoch")


def _logits(right: int, n: int = 10, k: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits for ``n`` examples of which the first ``right`` are classified correctly (margin 1)."""
    y = torch.tensor([i % k for i in range(n)])
    logits = torch.zeros(n, k)
    for i in range(n):
        logits[i, int(y[i]) if i < right else (int(y[i]) + 1) % k] = 1.0
    return logits, y


def test_auto_stops_fine_tuning_that_trails_the_probe_after_a_third_of_its_epochs():
    from types import SimpleNamespace

    from transferkit.strategies.auto import BEHIND, behind_probe, catch_up_epochs

    task = SimpleNamespace(multi_label=False, balanced=False)
    probe = SimpleNamespace(val_acc=0.8, val_loss=0.45)
    assert catch_up_epochs(15) == 5 and catch_up_epochs(3) == 2
    trailing = behind_probe(probe, task, epochs=6)  # two epochs to catch up
    assert trailing(0, *_logits(6)) is None, "the first epoch is never judged"
    assert trailing(1, *_logits(7)) == BEHIND
    catching = behind_probe(probe, task, epochs=6)
    assert catching(0, *_logits(6)) is None and catching(1, *_logits(9)) is None, "it leads: it goes on"
    # as accurate as the probe is not behind it
    assert behind_probe(probe, task, epochs=6)(1, *_logits(8)) is None
    # lower accuracy but a lower loss than the probe: more confident where right, so not clearly behind
    confident = SimpleNamespace(val_acc=0.8, val_loss=5.0)
    assert behind_probe(confident, task, epochs=6)(1, *_logits(7)) is None
    assert np.isfinite(probe.val_loss)


def test_a_budget_that_reading_and_scoring_use_up_is_said_with_what_to_give(colour_splits, tiny_backbone, tmp_path):
    from typer.testing import CliRunner

    from transferkit.cli import app

    r = CliRunner().invoke(app, ["fit", str(colour_splits), "--backbone", tiny_backbone, "--strategy", "linear",
                                 "--budget", "2s", "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())
    assert "so no time is left to train: the strategy trains its minimum" in said
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["budget"]["train_s"] == 0
