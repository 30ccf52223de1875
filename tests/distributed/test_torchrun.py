"""Real 2-process gloo runs through torchrun (a few seconds each on 2 cores)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeflow.checkpoint import load_checkpoint
from edgeflow.distributed import shard

ROOT = Path(__file__).resolve().parents[2]


def _edgeflow(*args, nproc=1, tmp):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "edgeflow", *map(str, args)]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    res = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, f"expected one JSON line (rank 0 only), got {res.stdout!r}"
    return json.loads(lines[0])


@pytest.mark.slow
def test_two_process_training_matches_single_process_and_checkpoints_interchange(tmp_path):
    common = ["train", "--model", "conv4", "--data", "digits", "--epochs", "3", "--size", "16",
              "--batch-size", "64", "--device", "cpu", "--json"]
    one = _edgeflow(*common, "--output", tmp_path / "one.pt", tmp=tmp_path)
    two = _edgeflow(*common, "--output", tmp_path / "two.pt", nproc=2, tmp=tmp_path)
    assert one["world_size"] == 1 and two["world_size"] == 2
    # same number of optimiser steps and schedule; only batch composition differs
    assert abs(one["train_acc"] - two["train_acc"]) < 0.1, (one["train_acc"], two["train_acc"])
    # rank 0 wrote exactly one checkpoint and no temporary files
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".pt", ".tmp")) == ["one.pt",
                                                                                        "two.pt"]
    sd, meta = load_checkpoint(tmp_path / "two.pt")
    assert meta["train"]["world_size"] == 2 and not any(k.startswith("module.") for k in sd)
    # a multi-process checkpoint validates in a single process, and starts a 2-process run
    val = _edgeflow("validate", "--model", "conv4", "--weights", tmp_path / "two.pt", "--data",
                    "digits", "--json", tmp=tmp_path)
    assert val["top1"] > 0.5
    _edgeflow("train", "--model", "conv4", "--data", "digits", "--epochs", "1", "--size", "16",
              "--weights", tmp_path / "one.pt", "--output", tmp_path / "three.pt", "--json",
              nproc=2, tmp=tmp_path)


def test_shards_cover_everything_once():
    for n in (0, 1, 7, 10):
        for world in (1, 2, 3):
            parts = [list(shard(n, rank=r, world_size=world)) for r in range(world)]
            assert [i for p in parts for i in p] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def _ddp_steps(out: Path, steps: int, *, nproc: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    worker = [str(Path(__file__).with_name("ddp_prune_steps.py")), str(out), str(steps)]
    cmd = [sys.executable, *worker] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        *worker]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    import numpy as np

    with np.load(out) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.slow
def test_ddp_hyperflows_steps_on_the_same_global_batches_equal_the_single_process_steps(tmp_path):
    """What DDP must make equal: each step's global batch is the single process's batch, so the
    averaged weight and score gradients, hence the updates, are the same (up to float summation
    order), the rank-averaged density is the same, and the replicas stay bit-identical. The model
    has no BatchNorm and no augmentation: per-rank batch statistics and per-rank crop streams are
    the two places where a K-process run legitimately differs from one process."""
    import numpy as np

    start = _ddp_steps(tmp_path / "start.npz", 0, nproc=1)
    one = _ddp_steps(tmp_path / "one.npz", 6, nproc=1)
    two = _ddp_steps(tmp_path / "two.npz", 6, nproc=2)
    assert int(one["world_size"]) == 1 and int(two["world_size"]) == 2
    assert int(two["agree"]) == 1
    params = [k for k in one if k not in ("density", "agree", "world_size")]
    assert any(k.endswith("scores") for k in params) and any(k.endswith("original") for k in params)
    for k in params:
        # the steps moved everything well beyond the tolerance the two runs must agree within
        assert np.abs(one[k] - start[k]).max() > 1e-3, k
        np.testing.assert_allclose(two[k], one[k], rtol=1e-5, atol=1e-6, err_msg=k)
        if k.endswith("scores"):  # the masks themselves are identical
            assert np.array_equal(two[k] > 0, one[k] > 0), k
    assert float(one["density"]) < float(start["density"])  # the pressure pruned
    assert abs(float(one["density"]) - float(two["density"])) < 1e-9


@pytest.mark.slow
def test_two_process_prune_reaches_the_exact_sparsity_with_identical_replicas(tmp_path):
    """The whole ``prune --nproc 2`` command: exact sparsity, bit-identical replicas, one plain
    checkpoint. Its accuracy is not compared with one process here (conv4's BatchNorm normalises
    per rank, and a 90%-sparse two-epoch run moves by many points between such changes): that
    comparison is ``benchmarks/scaleout.py``'s."""
    _edgeflow("train", "--model", "conv4", "--data", "digits", "--epochs", "4", "--size", "16",
              "--output", tmp_path / "dense.pt", "--device", "cpu", "--json", tmp=tmp_path)
    common = ["prune", "--model", "conv4", "--data", "digits", "--val-data", "digits",
              "--weights", tmp_path / "dense.pt", "--sparsity", "0.9", "--epochs", "2",
              "--regrowth-epochs", "1", "--batch-size", "64", "--device", "cpu", "--json"]
    one = _edgeflow(*common, "--output", tmp_path / "p1.pt", tmp=tmp_path)
    two = _edgeflow(*common, "--output", tmp_path / "p2.pt", nproc=2, tmp=tmp_path)
    assert one["world_size"] == 1 and two["world_size"] == 2
    # the controller read the same (rank-averaged) density everywhere: same exact final sparsity,
    # and the two replicas finished bit-identical (BatchNorm statistics included)
    assert abs(one["sparsity"] - 0.9) < 1e-3 and abs(two["sparsity"] - 0.9) < 1e-3
    assert two["ranks_agree"] is True
    # the 2-process checkpoint is a plain single-process one: it validates to the same top-1
    val = _edgeflow("validate", "--model", "conv4", "--weights", tmp_path / "p2.pt", "--data",
                    "digits", "--json", tmp=tmp_path)
    assert abs(val["top1"] - two["top1"]) < 1e-6
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("p")) == ["p1.pt", "p2.pt"]


@pytest.mark.slow
def test_two_process_meta_train_shards_trajectories_and_matches_single_process(tmp_path):
    import numpy as np

    _edgeflow("train", "--model", "conv4", "--data", "digits", "--epochs", "4", "--size", "16",
              "--output", tmp_path / "bb.pt", "--device", "cpu", "--json", tmp=tmp_path)
    common = ["meta-train", "--model", "conv4", "--weights", tmp_path / "bb.pt", "--data", "digits",
              "--val-data", "digits", "--tasks", "50", "--starts", "2", "--steps", "60",
              "--val-tasks", "6", "--teacher-steps", "8", "--theta-size", "64", "--hidden", "32",
              "--device", "cpu", "--objective", "trajectory", "--json"]
    one = _edgeflow(*common, "--output", tmp_path / "d1.pt", tmp=tmp_path)
    two = _edgeflow(*common, "--output", tmp_path / "d2.pt", nproc=2, tmp=tmp_path)
    assert one["world_size"] == 1 and two["world_size"] == 2 and two["ranks_agree"] is True
    # each rank generated its own chunk (not both ranks everything)
    assert one["trajectory_tasks_by_rank"] == [50] and two["trajectory_tasks_by_rank"] == [25, 25]
    # two chunks of 25 tasks, one per rank, gathered and written by rank 0: the same files as
    # the single process writes (trajectories are deterministic per task index)
    for c in ("chunk_00000.npz", "chunk_00001.npz"):
        a, b = np.load(tmp_path / "d1.trajectories" / c), np.load(tmp_path / "d2.trajectories" / c)
        assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files), c
    # val tasks split across ranks and summed: the same teacher choice and baseline accuracy
    assert one["teacher"] == two["teacher"]
    assert abs(one["val_acc_no_adaptation"] - two["val_acc_no_adaptation"]) < 1e-6
    assert abs(one["val_acc_hyperflow"] - two["val_acc_hyperflow"]) < 0.1
    # the 2-process drift is an ordinary checkpoint: evaluate it in a single process
    ev = _edgeflow("evaluate", "--model", "conv4", "--weights", tmp_path / "bb.pt", "--drift",
                   tmp_path / "d2.pt", "--data", "digits", "--shots", "5", "--episodes", "5",
                   "--methods", "none,hyperflow-euler", "--timing-episodes", "1", "--json",
                   tmp=tmp_path)
    assert set(ev["by_shots"]["5"]["methods"]) == {"none", "hyperflow-euler"}


@pytest.mark.slow
def test_two_process_outcome_stage_splits_the_tasks_and_matches_single_process(tmp_path):
    """``--objective outcome --nproc 2``: each rank computes half of every step's tasks (the same
    global tasks as one process), the summed gradients train the same drift, and the sharded
    selection scoring takes the same keep / stop / damp decisions."""
    import numpy as np

    _edgeflow("train", "--model", "conv4", "--data", "digits", "--epochs", "4", "--size", "16",
              "--output", tmp_path / "bb.pt", "--device", "cpu", "--json", tmp=tmp_path)
    # --steps 0: no regression training, whose per-rank row streams legitimately differ with the
    # world size, so both runs start the outcome stage from the same (bit-identical) drift
    common = ["meta-train", "--model", "conv4", "--weights", tmp_path / "bb.pt", "--data", "digits",
              "--val-data", "digits", "--tasks", "50", "--starts", "2", "--steps", "0",
              "--val-tasks", "6", "--teacher-steps", "8", "--theta-size", "64", "--hidden", "32",
              "--device", "cpu", "--objective", "outcome", "--outcome-steps", "12",
              "--selection-tasks", "40", "--json"]
    one = _edgeflow(*common, "--output", tmp_path / "d1.pt", tmp=tmp_path)
    two = _edgeflow(*common, "--output", tmp_path / "d2.pt", nproc=2, tmp=tmp_path)
    assert two["world_size"] == 2 and two["ranks_agree"] is True
    o1, o2 = one["outcome"], two["outcome"]
    # the work was split: half of the same number of tasks on each rank
    (n,) = o1["tasks_by_rank"]
    assert n > 0 and o2["tasks_by_rank"] == [n // 2, n // 2]
    for k in ("best_step", "damping", "val_no_harm_in_domain", "skipped_tasks", "val_tasks"):
        assert o1[k] == o2[k], k
    assert [h["step"] for h in o1["history"]] == [h["step"] for h in o2["history"]]
    assert [h.get("damping") for h in o1["history"]] == [h.get("damping") for h in o2["history"]]
    # val accuracies: a weight change of ~1e-7 could flip at most a borderline query (1/2000)
    for h1, h2 in zip(o1["history"], o2["history"], strict=True):
        assert abs(h1["val_acc"] - h2["val_acc"]) < 2e-3
    for name in ("none", "trajectory", "outcome"):
        assert abs(o1["selection"][name]["mean"] - o2["selection"][name]["mean"]) < 2e-3, name
    warm1, _ = load_checkpoint(tmp_path / "d1.trajectory.pt")
    warm2, _ = load_checkpoint(tmp_path / "d2.trajectory.pt")
    assert all(np.array_equal(warm1[k].numpy(), warm2[k].numpy()) for k in warm1)
    # the drifts: equal up to float summation order (one process adds the 8 task gradients in
    # turn, two add 4 + 4 and then the two sums), a relative error of ~1e-7 in each gradient that
    # AdamW turns into ~1e-7 in the weights (seen: 1.2e-7, one float32 ulp at 1); 1e-5 is 100x
    # that and under 1% of what 12 steps move the weights (~1e-3, checked below), so a wrong
    # average (half a batch, or a doubled one) fails it
    sd1, _ = load_checkpoint(tmp_path / "d1.pt")
    sd2, _ = load_checkpoint(tmp_path / "d2.pt")
    assert sd1.keys() == sd2.keys()
    for k in sd1:
        np.testing.assert_allclose(sd2[k].numpy(), sd1[k].numpy(), rtol=0, atol=1e-5, err_msg=k)
    moved = [float((sd1[k] - warm1[k]).abs().max()) for k in warm1
             if k in sd1 and sd1[k].shape == warm1[k].shape and sd1[k].is_floating_point()
             and k.endswith(".weight")]
    assert max(moved) > 1e-3


@pytest.mark.slow
def test_gradient_all_reduce_handles_ranks_without_gradients(tmp_path):
    """A rank whose tasks were all skipped still joins the all-reduce (zeros), a parameter no rank
    has a gradient for stays without one, and sharded per-item values come back whole."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    out = tmp_path / "grads.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(Path(__file__).with_name("grad_reduce_worker.py")), str(out)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    every = json.loads(out.read_text())
    assert len(every) == 2
    for rank in every:
        assert rank == {"a": [1.0] * 3, "b": None, "c": [3.0] * 3,
                        "full": [0.1, 10.1, 20.1, 30.1, 40.1]}


@pytest.mark.parametrize(("args", "code", "out", "err"), [
    (["version", "--json"], 0, '{"edgeflow"', ""),
    (["model", "inspect", "nosuch"], 1, "", "is not a package.module:build name"),
    (["version", "--bogus"], 2, "", "No such option"),
])
def test_a_torchrun_worker_keeps_its_exit_status_and_output(args, code, out, err, tmp_path):
    # a worker ends with os._exit (distributed.finish), which flushes nothing by itself: stdout
    # to a pipe is block-buffered, so a lost flush loses the JSON line
    env = dict(os.environ, PYTHONPATH=str(ROOT), WORLD_SIZE="2")
    res = subprocess.run([sys.executable, "-m", "edgeflow", *args], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == code, res.stderr[-2000:]
    assert res.stdout.startswith(out), res.stdout
    assert err in res.stderr


def test_a_failing_two_process_command_fails_with_its_message(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    res = subprocess.run([sys.executable, "-m", "edgeflow", "train", "--model", "nosuch", "--data",
                          "digits", "--output", "m.pt", "--nproc", "2"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert "nosuch" in res.stderr and "conv4" in res.stderr  # the error lists the valid names
