"""Trajectory regression as a decaying auxiliary term of the outcome objective: the term is the
regression loss of meta_train.py on the outcome drift, its weight falls to 0 by the last step, and
weight 0 trains exactly what the outcome objective alone trains."""

from __future__ import annotations

import pytest
import torch

from edgeflow.adapt import ThetaSpec
from edgeflow.adapt.meta_train import regression_loss
from edgeflow.adapt.outcome import OutcomeConfig, aux_weight_at, outcome_drift
from edgeflow.adapt.split import SplitFeatures
from edgeflow.adapt.trajectories import Trajectories, TrajectoryConfig
from edgeflow.errors import ConfigError
from tests.export.helpers import resnet20, small_drift


def _trajectories(theta_dim: int, feature_dim: int, *, rows: int = 12, length: int = 4,
                  seed: int = 0) -> Trajectories:
    """Random teacher paths (rows of 3 tasks x 4 starts), some stopped at 0 (stay put)."""
    g = torch.Generator().manual_seed(seed)
    tasks = rows // 4
    return Trajectories(
        paths=torch.randn(rows, length + 1, theta_dim, generator=g).cumsum(1) * 0.1,
        stop=torch.randint(0, length + 1, (rows,), generator=g),
        query_acc=torch.rand(rows, length + 1, generator=g),
        task_row=torch.arange(rows) % tasks,
        protos=torch.randn(tasks, 5, feature_dim, generator=g),
        shots=torch.full((tasks,), 5), shift=[""] * tasks, kind=["class"] * tasks,
        config=TrajectoryConfig(tasks=tasks), task_index=torch.arange(tasks))


def test_schedule_is_linear_from_the_weight_to_zero_at_the_last_step():
    w = [aux_weight_at(s, weight=0.8, steps=5) for s in range(1, 6)]
    assert w == pytest.approx([0.8, 0.6, 0.4, 0.2, 0.0])
    assert aux_weight_at(300, weight=2.0, steps=300) == 0.0
    assert aux_weight_at(1, weight=2.0, steps=1) == 0.0  # the only step is the last
    assert all(aux_weight_at(s, weight=0.0, steps=9) == 0.0 for s in range(1, 10))
    with pytest.raises(ConfigError, match="aux_weight must be >= 0"):
        OutcomeConfig(aux_weight=-0.1)
    with pytest.raises(ConfigError, match="aux_weight must be >= 0"):
        OutcomeConfig(aux_weight=float("nan"))


def test_the_regression_term_on_an_outcome_drift():
    """Well-defined on a drift that reads statistics: at the warm start it is the regressed
    drift's own regression loss, and its gradient reaches the drift's network and task encoder
    (not the re-centring gain, which the trajectories do not contain)."""
    torch.manual_seed(0)
    model = resnet20().requires_grad_(False)
    spec = ThetaSpec.from_model(model, max_size=64)
    split = SplitFeatures(model, spec)
    warm = small_drift(spec)
    drift = outcome_drift(warm, split, feature_dim=64, recenter_init=0.5)
    assert drift.uses_stats and not warm.uses_stats
    data = _trajectories(spec.size, 64)
    rows, t = torch.arange(len(data)), torch.linspace(0, 0.95, len(data))
    scale = drift.velocity_net.velocity_scale
    got = regression_loss(drift.trajectory_velocity, data, rows, t, kind="linear", scale=scale)
    with torch.no_grad():
        ref = regression_loss(warm, data, rows, t, kind="linear", scale=scale)
    torch.testing.assert_close(got.detach(), ref)
    got.backward()
    for name, p in {"velocity output": drift.velocity_net.out.weight,
                    "velocity blocks": drift.velocity_net.theta_in.weight,
                    "task encoder": drift.task_encoder.inp[1].weight,
                    "statistics bias": drift.velocity_net.stats_in.bias}.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert drift.velocity_net.layer_gain.grad is None
    # a stats-free drift: trajectory_velocity is its forward
    with torch.no_grad():
        torch.testing.assert_close(warm.trajectory_velocity(data.paths[:3, 0], t[:3], data.protos),
                                   warm(data.paths[:3, 0], t[:3, None], data.protos))


def _run(backbone, *, aux_weight: float, trajectories: bool, steps: int = 3):
    from edgeflow.adapt.drift import DriftConfig, DriftNet
    from edgeflow.adapt.outcome import meta_train_outcome
    from edgeflow.adapt.workflow import val_tasks
    from edgeflow.data import Preprocess, load_dataset

    torch.set_num_threads(1)
    _, net = backbone
    pre = Preprocess(size=16, channels=3)
    ds = load_dataset("digits", size=16)
    spec = ThetaSpec.from_model(net, max_size=32)
    split, theta0 = SplitFeatures(net, spec), spec.get(net)
    tasks = val_tasks(split, ds, pre, count=4, seed=1, shots=(1,), queries=3)
    dim = split.suffix(tasks[0].support_only, theta0).shape[1]
    torch.manual_seed(1)
    warm = DriftNet(DriftConfig(theta_dim=spec.size, feature_dim=dim, hidden=32, task_dim=16,
                                encoder_layers=1, blocks=1))
    torch.nn.init.normal_(warm.velocity_net.out.weight, std=0.02)
    data = _trajectories(spec.size, dim, seed=3) if trajectories else None
    cfg = OutcomeConfig(steps=steps, tasks_per_step=2, shots=(1,), queries=3, eval_every=1,
                        patience=10, aux_weight=aux_weight, aux_batch=16, seed=0)
    return meta_train_outcome(ds, pre, tasks, split, theta0, config=cfg, warm=warm.eval(),
                              recenter_init=0.25, trajectories=data)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_weight_zero_trains_exactly_what_the_outcome_loss_alone_trains(digits_backbone):
    """aux_weight 0 with trajectories given: the same tasks, losses and kept weights as a run
    without them (the term draws from its own generator); aux_weight > 0 changes training, and
    the history records the decaying weight and the regression loss at every eval."""
    alone, rep_alone = _run(digits_backbone, aux_weight=0.0, trajectories=False)
    zero, rep_zero = _run(digits_backbone, aux_weight=0.0, trajectories=True)
    assert _same(alone.state_dict(), zero.state_dict())
    for a, b in zip(rep_alone["history"], rep_zero["history"], strict=True):
        assert {k: v for k, v in a.items() if k not in ("seconds", "aux_loss")} == \
            {k: v for k, v in b.items() if k not in ("seconds", "aux_loss")}
    assert all(h["aux_loss"] is None for h in rep_alone["history"])
    assert all(h["aux_loss"] > 0 for h in rep_zero["history"])  # measured, not trained on
    _, rep_aux = _run(digits_backbone, aux_weight=5.0, trajectories=True)
    hist = rep_aux["history"]
    assert [h["aux_weight"] for h in hist] == pytest.approx([5.0, 5.0, 2.5, 0.0])
    assert [h["step"] for h in hist] == [0, 1, 2, 3]
    assert hist[2]["loss"] != rep_zero["history"][2]["loss"]  # step 1's update differed
    assert rep_aux["config"]["aux_weight"] == 5.0 and rep_aux["aux_target"] == "linear"
    with pytest.raises(ConfigError, match="needs the teacher trajectories"):
        _run(digits_backbone, aux_weight=1.0, trajectories=False, steps=1)
