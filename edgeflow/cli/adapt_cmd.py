"""``edgeflow meta-train`` and ``edgeflow evaluate``: HyperFlow's offline stage and its benchmark."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from edgeflow.cli.common import DEVICE_OPT, JSON_OPT, NPROC_OPT, command, emit, maybe_relaunch

MODEL_OPT = typer.Option(..., "--model", "-m", help="Backbone name (as trained), e.g. resnet20, "
                         "or your own package.module:build (imported again).")
WEIGHTS_OPT = typer.Option(..., "--weights", "-w", help="Backbone checkpoint (edgeflow train).")


def _ints(text: str, what: str) -> tuple[int, ...]:
    from edgeflow.errors import ConfigError

    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated integers like 1,5; got {text!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{what} needs positive integers like 1,5; got {text!r}")
    return values


def register(app: typer.Typer) -> None:
    command(app, "meta-train")(meta_train)
    command(app, "evaluate")(evaluate)


def meta_train(
    model: str = MODEL_OPT,
    weights: Path = WEIGHTS_OPT,
    data: str = typer.Option(..., "--data", "-d", help="Base split: meta-training tasks."),
    val_data: str = typer.Option(..., "--val-data", help="Val split: teacher recipe, early "
                                 "stopping and Euler step count are chosen on its episodes."),
    output: Path = typer.Option(..., "--output", "-o", help="Drift checkpoint to write (.pt)."),
    trajectories: Path = typer.Option(None, "--trajectories", help="Trajectory folder (default: "
                                      "OUTPUT with suffix .trajectories); resumes if present."),
    tasks: int = typer.Option(600, "--tasks", min=1, help="Base tasks to generate trajectories on."),
    starts: int = typer.Option(2, "--starts", min=1, help="Starts per task (clean + noisy)."),
    # the next three repeat TrajectoryConfig's defaults (importing it here would load torch for
    # every --help); tests/adapt/test_cli_bench.py keeps them equal
    teacher_steps: int = typer.Option(40, "--teacher-steps", min=1, help="Max teacher steps."),
    teacher_lr: float = typer.Option(3e-2, "--teacher-lr", help="Trajectory teacher's Adam lr."),
    teacher_recenter: float = typer.Option(0.0, "--teacher-recenter", min=0.0, max=2.0,
                                           help="Start the trajectory teacher at theta0 "
                                           "re-centred by this alpha (0: at theta0), so the drift "
                                           "learns what fine-tuning adds after re-centring."),
    instance_fraction: float = typer.Option(0.4, "--instance-fraction", min=0.0, max=1.0,
                                            help="Share of instance tasks (near-identical "
                                            "classes, where adapting pays) among base tasks."),
    steps: int = typer.Option(3000, "--steps", min=0, help="Meta-training iterations (max)."),
    target: str = typer.Option("linear", "--target", help="Velocity targets: linear or cubic."),
    theta_size: int = typer.Option(128, "--theta-size", min=1, help="Max adapted biases (last "
                                   "layers first)."),
    hidden: int = typer.Option(256, "--hidden", min=8, help="Drift width."),
    val_tasks: int = typer.Option(60, "--val-tasks", min=2, help="Val episodes for selection."),
    limit: int = typer.Option(None, "--limit", min=1, help="Use N base images (balanced)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the tasks and of the drift's training."),
    objective: str = typer.Option("outcome", "--objective", help="trajectory: regress the "
                                  "teacher's paths (the paper's HyperFlow); outcome: then train "
                                  "the drift on the query loss after adaptation, reading support "
                                  "statistics (writes OUTPUT.trajectory.pt too)."),
    outcome_steps: int = typer.Option(300, "--outcome-steps", min=0,
                                      help="Outcome training steps (8 tasks each)."),
    euler_steps: int = typer.Option(4, "--euler-steps", min=1, help="Outcome drift: Euler steps "
                                    "it is trained with and the device runs."),
    loop_every: int = typer.Option(0, "--loop-every", min=0, help="Outcome drift: re-read the "
                                   "support set every N Euler steps (closed loop; 0: open)."),
    selection_tasks: int = typer.Option(1000, "--selection-tasks", min=2, help="Fresh val tasks "
                                        "that choose the outcome drift's weights."),
    # repeats OutcomeConfig's default, for the same reason (the same test keeps them equal)
    aux_weight: float = typer.Option(0.0, "--aux-weight", min=0.0, help="Outcome drift: keep "
                                     "the trajectory regression as an auxiliary term of this "
                                     "weight, falling linearly to 0 by the last outcome step "
                                     "(0: off, the outcome loss alone)."),
    stats: bool = typer.Option(True, "--stats/--no-stats", help="Outcome drift: read the support "
                               "statistics at the theta layers (--no-stats: class prototypes "
                               "only, an ablation)."),
    shot_tokens: bool = typer.Option(False, "--shot-tokens/--no-shot-tokens", help="Outcome "
                                     "drift: its task encoder also reads each support image's "
                                     "features, not only the class prototypes."),
    device: str = DEVICE_OPT,
    nproc: int = NPROC_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Meta-train a HyperFlow drift network for a trained backbone (gradient-free adaptation).

    Example: edgeflow meta-train --model resnet20 --weights runs/backbone.pt --data
    ../shared/data/tiny-imagenet/base.zip --val-data ../shared/data/tiny-imagenet/val.zip
    --output runs/drift.pt --json

    Data-parallel: add --nproc 2 (or torchrun --nproc-per-node 2 -m edgeflow meta-train ...): the
    trajectory chunks and validation tasks are shared across processes and the drift trains in
    DDP (--steps and the batch stay global); the outcome stage too: each step's 8 tasks and the
    --selection-tasks scoring are split across processes (the same tasks as one process); only
    rank 0 writes and prints.
    """
    from edgeflow import distributed
    from edgeflow.adapt.meta_train import MetaTrainConfig
    from edgeflow.adapt.outcome import OBJECTIVES, OutcomeConfig
    from edgeflow.adapt.teacher import TeacherConfig
    from edgeflow.adapt.trajectories import TrajectoryConfig
    from edgeflow.adapt.workflow import run_meta_train
    from edgeflow.errors import unknown_name

    if objective not in OBJECTIVES:
        raise unknown_name("objective", objective, OBJECTIVES)
    maybe_relaunch(nproc)
    traj = TrajectoryConfig(tasks=tasks, starts=starts, seed=seed,
                            instance_fraction=instance_fraction, recenter=teacher_recenter,
                            teacher=TeacherConfig(lr=teacher_lr, steps=teacher_steps))
    res = run_meta_train(model=model, weights=weights, data=data, val_data=val_data, output=output,
                         trajectories=trajectories, theta_size=theta_size, traj_config=traj,
                         train_config=MetaTrainConfig(steps=steps, target=target, hidden=hidden,
                                                      seed=seed, device=device),
                         val_count=val_tasks, limit=limit, progress=not as_json,
                         objective=objective, selection_tasks=selection_tasks,
                         outcome_config=OutcomeConfig(steps=outcome_steps, euler_steps=euler_steps,
                                                      loop_every=loop_every, seed=seed,
                                                      eval_every=max(1, outcome_steps // 6),
                                                      aux_weight=aux_weight, use_stats=stats,
                                                      shot_tokens=shot_tokens,
                                                      device=device))
    if not distributed.info().is_main:
        return
    emit(res, as_json=as_json,
         human=f"wrote [bold]{escape(str(res['output']))}[/]: val accuracy "
               f"{res['val_acc_no_adaptation']:.4f} "
               f"-> {res['val_acc_hyperflow']:.4f} with {res['integrator']['steps']} Euler steps "
               f"and re-centring alpha {res['integrator']['recenter']} "
               f"(theta: {res['theta_size']} biases; the teacher trajectories gained "
               f"{100 * res['trajectory_gain']['all']['at_stop']:+.1f} points at their stops)"
               + _outcome_line(res))


def _outcome_line(res: dict) -> str:
    if "outcome" not in res:
        return ""
    sel = res["outcome"]["selection"]
    gain, vs = sel["outcome - none"], sel["outcome - trajectory"]
    return (f"; outcome drift on {res['outcome']['val_tasks']} fresh val tasks: "
            f"{100 * gain['mean']:+.2f} ± {100 * gain['ci95']:.2f} points over no adaptation, "
            f"{100 * vs['mean']:+.2f} ± {100 * vs['ci95']:.2f} over the regressed drift"
            + ("" if res["outcome"].get("val_no_harm_in_domain", True) else
               "; [bold red]it loses in-domain on val at some shot count[/]: adapt with "
               "guard=True or use --objective trajectory"))


def evaluate(
    model: str = MODEL_OPT,
    weights: Path = WEIGHTS_OPT,
    drift: Path = typer.Option(..., "--drift", help="Drift checkpoint (edgeflow meta-train)."),
    data: str = typer.Option(..., "--data", "-d", help="Test episodes come from this data."),
    classes: str = typer.Option("", "--classes", help="Evaluate on these classes of --data only "
                                "(indices into its sorted classes, e.g. '5-9' or '0,2,5'; empty: "
                                "all), as compile's --data-novel-classes."),
    ways: int = typer.Option(5, "--ways", min=2),
    shots: str = typer.Option("1,5", "--shots", help="Comma-separated shot counts."),
    episodes: int = typer.Option(600, "--episodes", min=1, help="Episodes per shot count."),
    queries: int = typer.Option(15, "--queries", min=1, help="Queries per class."),
    seed: int = typer.Option(0, "--seed", help="Episode seed (same seed = same episodes)."),
    methods: str = typer.Option("none,teacher,recenter,hyperflow-euler,hyperflow-heun", "--methods",
                                help="Any of none, teacher, recenter (the re-centring move "
                                "alone), hyperflow-euler, hyperflow-heun, full-finetune."),
    steps: int = typer.Option(None, "--steps", min=1, help="Euler steps (default: the drift's)."),
    timing_episodes: int = typer.Option(50, "--timing-episodes", min=0, help="Episodes timed per "
                                        "method (the rest reuse cached features)."),
    as_json: bool = JSON_OPT,
) -> None:
    """Few-shot accuracy (95% CI), adaptation time and peak memory of every method, same episodes.

    Per shot count and method the JSON gives accuracy, ci95, adapt_ms (median adaptation step),
    adapt_peak_mib (its peak allocations), median_ms (end to end) and gain over no adaptation.

    Example: edgeflow evaluate --model resnet20 --weights runs/backbone.pt --drift runs/drift.pt
    --data ../shared/data/mnist/test.zip --ways 5 --shots 1,5 --episodes 600 --json

    On a backbone trained on digits 0-4: edgeflow evaluate ... --data digits --classes 5-9
    """
    from edgeflow.adapt.workflow import run_evaluate
    from edgeflow.pipeline.config import parse_int_list  # compile's class syntax, one parser

    res = run_evaluate(model=model, weights=weights, drift=drift, data=data,
                       classes=tuple(parse_int_list(classes, name="--classes")), ways=ways,
                       shots=_ints(shots, "--shots"), episodes=episodes, queries=queries, seed=seed,
                       methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
                       steps=steps, timing_episodes=timing_episodes, progress=not as_json)
    lines = []
    for k, entry in res["by_shots"].items():
        for m, r in entry["methods"].items():
            ms = f"{r['adapt_ms']:.1f} ms" if r["adapt_ms"] is not None else "-"
            mib = f"{r['adapt_peak_mib']:.2f} MiB" if r["adapt_peak_mib"] is not None else "-"
            lines.append(f"{ways}-way {k}-shot {m:16s} {100 * r['accuracy']:6.2f} "
                         f"+- {100 * r['ci95']:.2f}  adaptation {ms}, peak {mib}")
    emit(res, as_json=as_json, human="\n".join(lines))
