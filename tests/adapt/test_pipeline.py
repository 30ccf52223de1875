import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from edgeflow.adapt import IntegratorSettings, ThetaSpec
from edgeflow.adapt.evaluate import EvalConfig, evaluate_adaptation, mean_ci, peak_memory_bytes
from edgeflow.adapt.meta_train import MetaTrainConfig, meta_train
from edgeflow.adapt.split import SplitFeatures
from edgeflow.adapt.teacher import TeacherConfig
from edgeflow.adapt.theta import features_with_theta, prototypes
from edgeflow.adapt.trajectories import (
    Trajectories,
    TrajectoryConfig,
    episode_samplers,
    generate_trajectories,
    load_trajectories,
    trajectory_task,
)
from edgeflow.adapt.workflow import trajectory_gains, val_tasks
from edgeflow.data import Preprocess, load_dataset
from edgeflow.errors import ConfigError, DataError

PRE = Preprocess(size=16, channels=3)
SMALL = TrajectoryConfig(tasks=5, chunk=2, queries=5, starts=2,
                         teacher=TeacherConfig(lr=5e-2, steps=6))


def test_trajectories_are_resumable_and_identical(tmp_path, digits_backbone):
    _, net = digits_backbone
    spec = ThetaSpec.from_model(net, max_size=32)
    ds = load_dataset("digits")
    out = generate_trajectories(net, spec, ds, PRE, tmp_path / "a", config=SMALL)
    first = load_trajectories(out)
    assert first.paths.shape == (10, 7, spec.size) and first.protos.shape == (5, 5, net.feature_dim)
    assert len(first.shift) == 5 and first.stop.max() <= 6
    torch.testing.assert_close(first.paths[::2, 0], spec.get(net).expand(5, -1))  # clean starts
    assert not torch.allclose(first.paths[1, 0], spec.get(net))  # noisy start
    # trajectory_task rebuilds the exact task a stored trajectory came from (analyses rely on it)
    assert first.task_index.tolist() == [0, 1, 2, 3, 4]
    task, shift, _ = trajectory_task(ds, PRE, episode_samplers(ds, SMALL), 3, SMALL)
    with torch.no_grad():
        rebuilt = prototypes(features_with_theta(net, task.support_x, spec.get(net), spec),
                             task.support_y, task.ways)
    torch.testing.assert_close(rebuilt, first.protos[3], atol=2e-3, rtol=2e-3)  # stored as float16
    assert "+".join(shift) == first.shift[3]
    (out / "chunk_00001.npz").unlink()  # an interrupted run: the missing chunk is regenerated
    generate_trajectories(net, spec, ds, PRE, out, config=SMALL)
    again = load_trajectories(out)
    torch.testing.assert_close(again.paths, first.paths)
    assert torch.equal(again.stop, first.stop)
    with pytest.raises(ConfigError, match="another configuration"):
        generate_trajectories(net, spec, ds, PRE, out, config=TrajectoryConfig(tasks=3))
    # fewer tasks of the same configuration: the first chunks are reused as they are
    fewer = load_trajectories(generate_trajectories(net, spec, ds, PRE, out,
                                                    config=replace(SMALL, tasks=2)))
    torch.testing.assert_close(fewer.paths, first.paths[:4])
    with pytest.raises(DataError, match="no trajectories"):
        load_trajectories(tmp_path / "empty")


def test_instance_fraction_sets_the_task_kinds_and_old_folders_read_as_class_tasks(tmp_path,
                                                                                 digits_backbone):
    _, net = digits_backbone
    spec = ThetaSpec.from_model(net, max_size=32)
    ds = load_dataset("digits")
    kinds = {}
    for frac in (0.0, 1.0):
        out = generate_trajectories(net, spec, ds, PRE, tmp_path / f"f{frac}",
                                    config=replace(SMALL, starts=1, instance_fraction=frac))
        kinds[frac] = [k == "instance" for k in load_trajectories(out).kind]
    assert kinds == {0.0: [False] * 5, 1.0: [True] * 5}
    shifts = load_trajectories(out).shift
    for chunk in out.glob("chunk_*.npz"):  # folders of the first instance-task format: no kinds,
        with np.load(chunk) as z:          # instance tasks marked by an "instance" shift prefix
            arrays = {k: z[k] for k in z.files if k != "kind"}
        arrays["shift"] = np.asarray(["+".join(["instance", *([s] if s else [])])
                                      for s in arrays["shift"]])
        np.savez(chunk, **arrays)
    legacy = load_trajectories(out)
    assert legacy.kind == ["instance"] * 5 and legacy.shift == shifts
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["config"]["instance_fraction"]  # written before instance tasks existed
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert load_trajectories(out).config.instance_fraction == 0.0
    for chunk in out.glob("chunk_*.npz"):  # and their chunks carry no kinds: class tasks
        with np.load(chunk) as z:
            arrays = {k: z[k] for k in z.files if k != "kind"}
        arrays["shift"] = np.asarray([s.removeprefix("instance").removeprefix("+")
                                      for s in arrays["shift"]])
        np.savez(chunk, **arrays)
    assert load_trajectories(out).kind == ["class"] * 5


def test_meta_train_fits_the_velocities_and_keeps_the_best_val(tmp_path, digits_backbone):
    _, net = digits_backbone
    spec = ThetaSpec.from_model(net, max_size=32)
    ds = load_dataset("digits")
    data = load_trajectories(generate_trajectories(net, spec, ds, PRE, tmp_path / "t",
                                                   config=SMALL))
    split = SplitFeatures(net, spec)
    vt = val_tasks(split, ds, PRE, count=4, queries=5)
    drift, report = meta_train(data, vt, split, spec.get(net), config=MetaTrainConfig(
        steps=40, eval_every=20, hidden=32, task_dim=16, step_choices=(1, 2)))
    assert report["best_val_acc"] >= report["val_acc_no_adaptation"]
    # steps and re-centring strength chosen jointly: the cheapest setting within tolerance of the
    # best on val (steps 0 = the drift unused; alpha 0 and steps 0 = no adaptation)
    grid = {(float(a), int(s)): v for a, row in report["val_acc_by_recenter"].items()
            for s, v in row.items()}
    assert set(grid) == {(a, s) for a in MetaTrainConfig().recenter_choices for s in (0, 1, 2)}
    assert grid[(0.0, 0)] == report["val_acc_no_adaptation"]
    chosen = (report["integrator"]["recenter"], report["integrator"]["steps"])
    assert report["val_acc_chosen"] == grid[chosen] >= max(grid.values()) - 0.002
    assert chosen == min(((a, s) for (a, s), v in grid.items() if v >= max(grid.values()) - 0.002),
                         key=lambda k: (k[1], k[0]))
    losses = [h["loss"] for h in report["history"][1:]]
    assert losses and all(np.isfinite(losses))
    assert torch.all(drift.velocity_net.velocity_scale > 0)


def test_evaluation_is_reproducible_and_reports_every_method(digits_backbone):
    _, net = digits_backbone
    spec = ThetaSpec.from_model(net, max_size=32)
    ds = load_dataset("digits")
    from edgeflow.adapt import DriftConfig, DriftNet

    torch.manual_seed(0)
    drift = DriftNet(DriftConfig(theta_dim=spec.size, feature_dim=net.feature_dim, hidden=32,
                                 task_dim=16)).eval()
    torch.nn.init.normal_(drift.velocity_net.out.weight, std=0.05)
    cfg = EvalConfig(shots=(1, 2), episodes=3, queries=4, timing_episodes=2, memory_episodes=1,
                     full_episodes=1, step_sweep=(1, 3),
                     methods=("none", "teacher", "hyperflow-euler", "hyperflow-heun",
                              "full-finetune"))
    kw = dict(drift=drift, theta0=spec.get(net), settings=IntegratorSettings(steps=3),
              teacher=TeacherConfig(lr=1e-2, steps=3), config=cfg, keep_episodes=True)
    a = evaluate_adaptation(net, spec, ds, PRE, **kw)
    b = evaluate_adaptation(net, spec, ds, PRE, **kw)
    for shots in ("1", "2"):
        assert a["by_shots"][shots]["episode_accuracy"] == b["by_shots"][shots]["episode_accuracy"]
        res = a["by_shots"][shots]["methods"]
        # full fine-tuning and the step sweep: on the largest shot count only (expensive)
        assert set(res) == set(cfg.methods) - ({"full-finetune"} if shots == "1" else set())
        assert res["none"]["episodes"] == 3
        for r in res.values():
            assert 0 <= r["accuracy"] <= 1 and r["median_ms"] > 0
        # every step ends with support prototypes; backprop keeps activations on top of that, so
        # the teacher allocates more than integrating the drift, which adds little to "none"
        assert res["teacher"]["adapt_peak_mib"] > res["hyperflow-euler"]["adapt_peak_mib"] >= \
            res["none"]["adapt_peak_mib"] > 0
        assert res["none"]["adapt_extra_mib"] == 0 and res["none"]["adapt_extra_ms"] == 0
        assert res["teacher"]["adapt_extra_mib"] > res["hyperflow-euler"]["adapt_extra_mib"]
    assert a["by_shots"]["2"]["methods"]["full-finetune"]["episodes"] == 1
    assert set(a["by_shots"]["2"]["euler_steps"]) == {"1", "3"}
    assert "euler_steps" not in a["by_shots"]["1"]
    json.dumps(a)  # JSON-able
    c = evaluate_adaptation(net, spec, ds, PRE, **{**kw, "config": EvalConfig(
        shots=(1,), episodes=3, queries=4, seed=1, timing_episodes=0, memory_episodes=0)})
    assert c["by_shots"]["1"]["episode_accuracy"]["none"] != a["by_shots"]["1"]["episode_accuracy"]["none"]


def test_mean_ci_and_peak_memory():
    mean, ci = mean_ci([0.5, 0.7, 0.6, 0.8])
    assert mean == pytest.approx(0.65)
    assert ci == pytest.approx(1.96 * np.std([0.5, 0.7, 0.6, 0.8], ddof=1) / 2)
    peak = peak_memory_bytes(lambda: torch.ones(1024, 1024).sum())  # 4 MiB live at the peak
    assert 4 * 2**20 <= peak < 5 * 2**20


def test_load_backbone_reads_channel_pruned_checkpoints(tmp_path):
    """A channel-pruned checkpoint is narrower than create_model's; adaptation must still load it."""
    from edgeflow.adapt.workflow import load_backbone
    from edgeflow.prune.finalize import load_pruned
    from edgeflow.prune.run import prune_model

    out = prune_model(model="conv4", data="digits", sparsity=0.5, granularity="channel",
                      output=tmp_path / "c.pt", epochs=1, regrowth_epochs=0, limit=300,
                      size=16, model_kwargs={"width": 16}, device="cpu")
    assert out["macs"] < out["dense_macs"]
    net, meta, pre = load_backbone("conv4", tmp_path / "c.pt")
    ref = load_pruned(tmp_path / "c.pt")
    x = torch.randn(4, 3, pre.size, pre.size)
    assert torch.equal(net.features(x), ref.features(x))
    assert ThetaSpec.from_model(net, max_size=64).size > 0 and meta["prune"]["channels"]


def test_trajectory_gains_by_kind_on_hand_made_curves():
    acc = torch.tensor([[0.5, 0.7, 0.6],   # class task, stops at 1: +0.2, last +0.1
                        [0.4, 0.4, 0.3],   # class task, stops at 0: 0, last -0.1
                        [0.2, 0.5, 0.8]])  # instance task, stops at 2: +0.6
    data = Trajectories(paths=torch.zeros(3, 3, 2), stop=torch.tensor([1, 0, 2]), query_acc=acc,
                        task_row=torch.tensor([0, 1, 2]), protos=torch.zeros(3, 2, 4),
                        shots=torch.ones(3, dtype=torch.long), shift=["", "invert", "blur"],
                        kind=["class", "class", "instance"], config=SMALL,
                        task_index=torch.arange(3))
    g = trajectory_gains(data)
    assert g["class"]["rows"] == 2 and g["instance"]["rows"] == 1 and g["all"]["rows"] == 3
    assert g["class"]["at_stop"] == pytest.approx(0.1, abs=1e-6)
    assert g["class"]["at_last"] == pytest.approx(0.0, abs=1e-6)
    assert g["instance"]["at_stop"] == pytest.approx(0.6, abs=1e-6)
    assert g["all"]["at_last"] == pytest.approx((0.1 - 0.1 + 0.6) / 3, abs=1e-6)


def test_recentred_starts_store_the_teacher_path_from_recentring_minus_the_move(tmp_path,
                                                                                digits_backbone):
    from edgeflow.adapt.recenter import recentered, support_pass
    from edgeflow.adapt.teacher import finetune, flip_cache

    _, net = digits_backbone
    spec = ThetaSpec.from_model(net, max_size=32)
    ds = load_dataset("digits")
    cfg = replace(SMALL, tasks=2, starts=1, recenter=0.5)
    got = load_trajectories(generate_trajectories(net, spec, ds, PRE, tmp_path / "r", config=cfg))
    plain = load_trajectories(generate_trajectories(net, spec, ds, PRE, tmp_path / "p",
                                                    config=replace(cfg, recenter=0.0)))
    assert got.config.recenter == 0.5
    theta0 = spec.get(net)
    torch.testing.assert_close(got.paths[:, 0], theta0.expand(2, -1))  # stored from theta0
    split = SplitFeatures(net.eval(), spec)
    for row in range(2):  # reference: the teacher run by hand from the re-centred theta0
        task, _, _ = trajectory_task(ds, PRE, episode_samplers(ds, cfg), row, cfg)
        shots = len(task.support_y) // task.ways
        _, means = support_pass(split, split.prefix(task.support_x), theta0)
        start = recentered(theta0, means, alpha=0.5)
        assert (start - theta0).abs().max() > 1e-3  # digits' support means are off beta
        sup = flip_cache(split, task.support_x) if shots == 1 else split.prefix(task.support_x)
        ref = finetune(split, sup, task.support_y, task.ways, start, config=cfg.teacher).path
        torch.testing.assert_close(got.paths[row], ref - (start - theta0), atol=2e-3, rtol=0)
        assert not torch.allclose(got.paths[row, -1], plain.paths[row, -1], atol=1e-3)
