"""``edgeflow prune``: Hyperflows (weight, n:m, channel) or a baseline, then a plain checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from edgeflow.cli.common import DEVICE_OPT, JSON_OPT, NPROC_OPT, command, emit, maybe_relaunch


def register(app: typer.Typer) -> None:
    command(app, "prune")(prune)


def prune(
    model: str = typer.Option(..., "--model", "-m", help="Model name, e.g. resnet20, vgg11, conv4, "
                              "or your own package.module:build (imported; its head as recorded "
                              "in --weights by `edgeflow train`; weight or n:m granularity)."),
    data: str = typer.Option(..., "--data", "-d", help="Training data: directory or .zip (ImageFolder)."),
    sparsity: float = typer.Option(..., "--sparsity", "-s", min=0.0, max=0.9999,
                                   help="Fraction of conv+linear weights to zero, e.g. 0.95 (for n:m, "
                                   "0.5 is the 2:4 pattern; channel: see --budget)."),
    output: Path = typer.Option(..., "--output", "-o", help="Pruned checkpoint to write (.pt)."),
    granularity: str = typer.Option("weight", "--granularity", "-g",
                                    help="weight (unstructured), n:m (2:4, or N:M) or channel "
                                    "(a physically smaller model)."),
    method: str = typer.Option("hyperflows", "--method",
                               help="hyperflows, gmp (gradual magnitude), magnitude (one-shot) "
                               "or random; baselines are weight-granularity only."),
    epochs: int = typer.Option(3, "--epochs", "-e", min=1, help="Pruning-phase epochs."),
    regrowth_epochs: int = typer.Option(None, "--regrowth-epochs", min=0,
                                        help="Regrowth/fine-tune epochs after pruning "
                                        "(default: epochs // 2)."),
    weights: Path = typer.Option(None, "--weights", "-w", help="Start from this checkpoint."),
    val_data: str = typer.Option(None, "--val-data", help="Data for the final top-1."),
    limit: int = typer.Option(None, "--limit", min=1, help="Use N training images (class-balanced)."),
    val_limit: int = typer.Option(None, "--val-limit", min=1, help="Use N validation images."),
    lr: float = typer.Option(0.1, "--lr", help="Peak weight lr of the pruning phase (cosine to /30)."),
    ft_lr: float = typer.Option(1e-3, "--ft-lr", help="Weight lr of the regrowth phase (to /10)."),
    score_lr: float = typer.Option(None, "--score-lr", help="Score Adam lr (default: auto, "
                                   "max(1e-3, 10 / pruning steps) under pressure, the spec's "
                                   "1e-3 for n:m at its pattern sparsity)."),
    batch_size: int = typer.Option(128, "--batch-size", min=1),
    controller_every: int = typer.Option(0, "--controller-every", min=0,
                                         help="Steps between pressure-controller moves (0: auto, "
                                         "~25 moves; steps per epoch = the spec's once per epoch)."),
    score_init_order: str = typer.Option("random", "--score-init-order",
                                         help="random (the spec: t ~ U(0.2, 0.5)) or magnitude "
                                         "(same range ordered by |w|; helps short runs)."),
    controller_release: str = typer.Option("auto", "--controller-release",
                                           help="inertia (the spec's controller), reset (gamma to "
                                           "0 whenever the density is below the target: avoids "
                                           "the overshoot of short runs) or auto (reset below "
                                           "20 pruning epochs)."),
    budget: str = typer.Option("weights", "--budget", help="channel only: count removed 'weights' "
                               "or 'flops' (multiply-accumulates) against --sparsity."),
    channel_groups: str = typer.Option("auto", "--channel-groups",
                                       help="channel only: which channels go together. depgraph: "
                                       "Torch-Pruning's dependency graph, any traceable model "
                                       "(residual streams, depthwise convs, concatenations; the "
                                       "fast option), inner: block-inner channels of CIFAR "
                                       "ResNets / every conv of conv4 and VGG, auto: inner where "
                                       "it applies, else depgraph."),
    exclude: list[str] = typer.Option([], "--exclude", help="Layer to keep dense (repeatable), "
                                      "e.g. --exclude conv1 --exclude linear."),
    seed: int = typer.Option(0, "--seed"),
    device: str = DEVICE_OPT,
    nproc: int = NPROC_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Prune a model to a requested sparsity and write a plain (mask-free) checkpoint.

    Example: edgeflow prune --model resnet20 --weights ../shared/weights/cifar10-resnet20-12fca82f.th
    --data ../shared/data/cifar10/train.zip --val-data ../shared/data/cifar10/test.zip
    --sparsity 0.95 --granularity weight --epochs 3 --regrowth-epochs 1 --output runs/r20-95.pt

    The JSON holds `sparsity` (achieved fraction of zero conv+linear weights), `top1` (with
    --val-data) and per-layer density in `layers`. Load the result with
    edgeflow.prune.load_pruned(path).

    Channel pruning of a whole network (residual streams too), for ONNX Runtime speed:
    edgeflow prune --model resnet20 --weights ../shared/weights/cifar10-resnet20-12fca82f.th
    --data ../shared/data/cifar10/train.zip --granularity channel --channel-groups depgraph
    --budget flops --sparsity 0.5 --output runs/r20-ch.pt

    Data-parallel: add --nproc 2 (or launch with torchrun --nproc-per-node 2 -m edgeflow prune ...);
    --batch-size stays the global batch, and only rank 0 writes the checkpoint and prints.
    """
    from edgeflow import distributed
    from edgeflow.prune.run import prune_model

    maybe_relaunch(nproc)
    result = prune_model(model=model, data=data, sparsity=sparsity, granularity=granularity,
                         output=output, method=method, epochs=epochs, regrowth_epochs=regrowth_epochs,
                         weights=weights, val_data=val_data, limit=limit, val_limit=val_limit,
                         exclude=tuple(exclude), progress=not as_json, lr=lr, ft_lr=ft_lr,
                         score_lr=score_lr, batch_size=batch_size,
                         controller_every=controller_every, budget=budget,
                         score_init_order=score_init_order, seed=seed, device=device,
                         controller_release=controller_release, channel_groups=channel_groups)
    if not distributed.info().is_main:
        return
    top1 = f", top-1 {result['top1']:.4f}" if "top1" in result else ""
    emit(result, as_json=as_json,
         human=f"wrote [bold]{escape(str(result['output']))}[/]: sparsity {result['sparsity']:.4f} "
               f"(asked {sparsity}){top1}, MACs {result['macs']:,} of {result['dense_macs']:,}")
