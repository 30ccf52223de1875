"""``edgeflow train`` and ``edgeflow validate``: supervised training and top-1 accuracy."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from edgeflow.cli.common import DEVICE_OPT, JSON_OPT, NPROC_OPT, command, emit, maybe_relaunch

MODEL_OPT = typer.Option(..., "--model", "-m", help="Model name: conv4, efficientnet_lite0, "
                         "resnet12, resnet18, resnet20/32/56, vgg11, vgg19; or your own model as "
                         "package.module:build (a callable returning a torch.nn.Module), which "
                         "the checkpoint records and later commands import again.")
HEAD_OPT = typer.Option("", "--head", help="Your own model's classifier Linear layer, e.g. 'fc' "
                        "(default: the one Linear that gives the output).")
DATA_OPT = typer.Option(..., "--data", "-d", help="Directory, .zip (ImageFolder layout) or 'digits'.")
SPLIT_OPT = typer.Option(None, "--split", help="Split to read when the archive holds several.")
LIMIT_OPT = typer.Option(None, "--limit", min=1, help="Use N images, balanced over classes "
                         "(deterministic).")
SIZE_OPT = typer.Option(None, "--size", min=4, help="Input image side in pixels (default: the "
                        "checkpoint's, else the model's own).")


def register(app: typer.Typer) -> None:
    command(app, "train")(train)
    command(app, "validate")(validate)


def train(
    model: str = MODEL_OPT,
    data: str = DATA_OPT,
    epochs: int = typer.Option(10, "--epochs", "-e", min=0, help="Passes over the data."),
    output: Path = typer.Option(..., "--output", "-o", help="Checkpoint to write (.pt)."),
    weights: Path = typer.Option(None, "--weights", "-w", help="Start from this checkpoint (for "
                                 "your own model also a state dict in its own names; loaded with "
                                 "weights_only=True)."),
    head: str = HEAD_OPT,
    val_data: str = typer.Option(None, "--val-data", help="Data for per-epoch validation accuracy."),
    lr: float = typer.Option(0.05, "--lr", help="Peak learning rate (cosine-decayed)."),
    batch_size: int = typer.Option(128, "--batch-size", min=1),
    optimizer: str = typer.Option("sgd", "--optimizer", help="sgd (Nesterov) or adam (AdamW)."),
    weight_decay: float = typer.Option(5e-4, "--weight-decay"),
    label_smoothing: float = typer.Option(0.0, "--label-smoothing", min=0.0, max=0.5),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Random crop + flip."),
    size: int = SIZE_OPT,
    split: str = SPLIT_OPT,
    limit: int = LIMIT_OPT,
    seed: int = typer.Option(0, "--seed"),
    device: str = DEVICE_OPT,
    nproc: int = NPROC_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Train (or fine-tune) a model on an ImageFolder dataset and write a checkpoint.

    Example: edgeflow train --model resnet20 --data ../shared/data/cifar10/train.zip --epochs 1
    --weights ../shared/weights/cifar10-resnet20-12fca82f.th --output runs/r20.pt

    Data-parallel: add --nproc 2 (or launch with torchrun --nproc-per-node 2 -m edgeflow train ...).
    """
    from edgeflow import distributed
    from edgeflow.workflows import train_model

    maybe_relaunch(nproc)

    result = train_model(model=model, data=data, epochs=epochs, output=output, weights=weights,
                         val_data=val_data, lr=lr, batch_size=batch_size, optimizer=optimizer,
                         weight_decay=weight_decay, label_smoothing=label_smoothing,
                         augment=augment, size=size, split=split, limit=limit, seed=seed,
                         device=device, progress=not as_json, head=head)
    if not distributed.info().is_main:
        return
    emit(result, as_json=as_json,
         human=f"wrote [bold]{escape(str(result['output']))}[/] after {epochs} epochs: train acc "
               f"{result['train_acc']:.4f}" + (f", val top-1 {result['val_top1']:.4f}"
                                               if result.get("val_top1") is not None else ""))


def validate(
    model: str = MODEL_OPT,
    weights: Path = typer.Option(..., "--weights", "-w", help="Checkpoint to evaluate."),
    data: str = DATA_OPT,
    limit: int = LIMIT_OPT,
    size: int = SIZE_OPT,
    split: str = SPLIT_OPT,
    device: str = DEVICE_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Top-1 accuracy of a checkpoint on a labelled dataset (class folders sorted by name).

    Example: edgeflow validate --model resnet20 --weights
    ../shared/weights/cifar10-resnet20-12fca82f.th --data ../shared/data/cifar10/test.zip
    --limit 1000 --json
    """
    from edgeflow.workflows import validate_model

    result = validate_model(model=model, weights=weights, data=data, limit=limit, size=size,
                            split=split, device=device, progress=not as_json)
    emit(result, as_json=as_json,
         human=f"top-1 [bold]{result['top1']:.4f}[/] on {result['images']} images of {escape(str(data))}")
