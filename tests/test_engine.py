"""The training engine on its own, with a tiny regression model: early stopping, the time budget, best-epoch
keeping and exact resume (weights, optimizer, scheduler and history equal an uninterrupted run's)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from transferkit.engine.accel import make_accelerator
from transferkit.engine.optim import warmup_cosine
from transferkit.engine.sampling import EpochShuffleSampler
from transferkit.engine.trainer import History, fit


@dataclass
class Epoch:
    epoch: int
    train_loss: float
    val_score: float
    lr: float
    seconds: float


class Scripted:
    """Regression on a fixed toy set; the "validation score" of each epoch is read from ``scores`` (so the test
    decides which epoch is best) and the weights each epoch ended with are kept for comparison."""

    record = Epoch

    def __init__(self, scores: list[float] | None = None, keep_last: bool = False):
        self.scores, self.weights, self.steps = scores, [], 0
        self.better = None if keep_last else (lambda a, b: b is None or a.val_score > b.val_score)

    def start_epoch(self, epoch: int) -> None:
        pass

    def step(self, model, batch):
        x, y = batch
        self.steps += 1
        return torch.nn.functional.mse_loss(model(x).squeeze(1), y), len(y)

    def train_scores(self, seen: float) -> dict[str, float]:
        return {}

    def evaluate(self, model, epoch: int):
        self.weights.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"val_score": self.scores[epoch] if self.scores else 0.0}, None

    def status(self, rec: Epoch) -> str:
        return f"loss {rec.train_loss:.3f}"


def setup(epochs: int = 6):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))
    x = torch.randn(40, 4, generator=torch.Generator().manual_seed(1))
    loader = DataLoader(TensorDataset(x, x.sum(1)), batch_size=8, sampler=EpochShuffleSampler(40, seed=0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, opt, warmup_cosine(opt, epochs * len(loader), 2), loader


@pytest.fixture(scope="module")
def acc():
    return make_accelerator("no", cpu=True)


def test_keeps_the_best_epoch_and_stops_after_patience(acc):
    method = Scripted([0.1, 0.5, 0.3, 0.2, 0.9, 0.9])
    model, opt, sched, loader = setup()
    history, best = fit(method, model, opt, sched, loader, acc, epochs=6, patience=2)
    assert isinstance(history, History)
    assert history.stopped == "early stopping" and len(history.epochs) == 4  # epochs 2 and 3 did not beat 1
    assert history.best_epoch == 1 and history.best.val_score == 0.5
    for k, v in model.state_dict().items():
        assert torch.equal(v, method.weights[1][k]) and torch.equal(best[k], method.weights[1][k]), k
    d = history.to_dict()
    assert [e["epoch"] for e in d["epochs"]] == [0, 1, 2, 3]
    assert set(d["epochs"][0]) == {"epoch", "train_loss", "val_score", "lr", "seconds"}  # only what Epoch declares


def test_keep_last_without_a_comparison_rule(acc):
    method = Scripted([0.9, 0.1, 0.0], keep_last=True)
    model, opt, sched, loader = setup(3)
    history, best = fit(method, model, opt, sched, loader, acc, epochs=3, patience=1)
    assert history.stopped == "completed" and history.best_epoch == 2
    for k, v in best.items():
        assert torch.equal(v, method.weights[2][k]), k


def test_time_budget_stops_before_an_epoch_or_a_step_that_would_overrun(acc):
    model, opt, sched, loader = setup()
    history, _ = fit(Scripted(), model, opt, sched, loader, acc, epochs=6, deadline=time.monotonic())
    assert history.stopped == "time budget" and len(history.epochs) == 1

    method = Scripted(keep_last=True)
    model, opt, sched, loader = setup()
    history, _ = fit(method, model, opt, sched, loader, acc, epochs=6, deadline=time.monotonic(), budget="step")
    assert history.stopped == "time budget" and len(history.epochs) == 1 and method.steps == 1
    assert sched.last_epoch == 1  # one step taken, and the cut epoch recorded over its one batch


def test_resume_equals_an_uninterrupted_run(acc, tmp_path):
    scores = [0.1, 0.4, 0.2, 0.6, 0.3, 0.5]
    model, opt, sched, loader = setup()
    reference, _ = fit(Scripted(scores), model, opt, sched, loader, acc, epochs=6, patience=99)
    ref_weights = {k: v.clone() for k, v in model.state_dict().items()}
    ref_opt, ref_sched = opt.state_dict(), sched.state_dict()

    class Crash(Exception):
        pass

    def crash_at_4(epoch: int) -> int:
        if epoch == 4:
            raise Crash
        return 0

    model, opt, sched, loader = setup()
    with pytest.raises(Crash):
        fit(Scripted(scores), model, opt, sched, loader, acc, epochs=6, patience=99, checkpoint_dir=tmp_path,
            on_epoch_start=crash_at_4)
    assert (tmp_path / "last.pt").is_file() and not (tmp_path / "last.tmp").exists()
    model, opt, sched, loader = setup()  # a fresh process rebuilds everything the same way
    method = Scripted(scores)
    history, _ = fit(method, model, opt, sched, loader, acc, epochs=6, patience=99, checkpoint_dir=tmp_path)
    assert method.steps == 2 * len(loader), "only epochs 4 and 5 were trained again"
    assert history.best_epoch == reference.best_epoch == 3
    strip = [{k: v for k, v in e.items() if k != "seconds"} for e in history.to_dict()["epochs"]]
    assert strip == [{k: v for k, v in e.items() if k != "seconds"} for e in reference.to_dict()["epochs"]]
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref_weights[k]), k
    # the optimizer ends in the same state: step counts and both moments of every parameter
    state, ref_state = opt.state_dict()["state"], ref_opt["state"]
    assert state.keys() == ref_state.keys() and len(state) == 4
    for i in state:
        assert state[i].keys() == ref_state[i].keys() == {"step", "exp_avg", "exp_avg_sq"}
        for k in state[i]:
            assert torch.equal(state[i][k], ref_state[i][k]), (i, k)
    assert sched.state_dict() == ref_sched
