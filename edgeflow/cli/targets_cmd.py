"""``edgeflow targets ...``: the device profiles and the compile-time checks against them."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from edgeflow.cli.common import JSON_OPT, command, emit

app = typer.Typer(help="Device profiles (targets/*.toml): list, show, and check a model against one.",
                  no_args_is_help=True)

TARGET_ARG = typer.Argument(..., help="Built-in target name (see `edgeflow targets list`) or the "
                            "path of your own .toml profile.")


@command(app, "list")
def list_targets(as_json: bool = JSON_OPT) -> None:
    """Every built-in device profile with its key facts.

    Example: edgeflow targets list --json
    """
    from edgeflow.targets import Target, target_names

    rows = [Target.load(n).to_dict() for n in target_names()]
    lines = [f"{'name':<22} {'backend':<12} {'SM':<5} {'precisions':<15} {'2:4':<4} {'DLA':<4} "
             f"{'budget MB':>9} {'batch':>9}"]
    for r in rows:
        lines.append(f"{r['name']:<22} {r['backend']:<12} {r['gpu_sm']:<5} "
                     f"{','.join(r['precisions']):<15} {'yes' if r['sparse_2_4'] else 'no':<4} "
                     f"{r['dla_cores']:<4} {r['memory_budget_mb']:>9} "
                     f"{str(r['batch_min']) + '-' + str(r['batch_max']):>9}")
    emit({"targets": rows}, as_json=as_json, human="\n".join(lines))


@command(app, "show")
def show(target: str = TARGET_ARG, as_json: bool = JSON_OPT) -> None:
    """Every field of one profile, with what it means.

    Example: edgeflow targets show jetson-orin-nano-8gb
    """
    from edgeflow.targets import Target, field_help

    d = Target.load(target).to_dict()
    helps = field_help()
    human = "\n".join(f"[bold]{k}[/] = {json.dumps(d[k])}   [dim]# {h}[/]" for k, h in helps.items())
    emit(d, as_json=as_json, human=human + f"\n[dim]from {d['source']}[/]")


@command(app, "check")
def check(
    target: str = TARGET_ARG,
    model: Path = typer.Option(None, "--onnx", help="Backbone .onnx: its weights and activations "
                               "at the target's largest batch enter the memory plan."),
    drift: Path = typer.Option(None, "--drift", help="Drift network .onnx (weights + activations at "
                               "batch 1 enter the memory plan)."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, fp16 or int8."),
    sparse: bool = typer.Option(False, "--sparse-2-4", help="The model is 2:4 sparse and should use "
                                "sparse tensor cores."),
    dla: bool = typer.Option(False, "--dla", help="Run on a DLA core."),
    calibration: Path = typer.Option(None, "--calibration", help="Calibration sample (.npy) or "
                                     "image folder, for INT8."),
    trt_version: str = typer.Option(None, "--trt-version", help="TensorRT that will build the engine "
                                    "(e.g. 10.3.0); checked against the target's versions."),
    as_json: bool = JSON_OPT,
) -> None:
    """Run the compile-time checks of a deployment request against a target; exit 1 if any fails.

    Example: edgeflow targets check jetson-xavier-nx --onnx backbone.onnx --precision int8 --sparse-2-4
    """
    from edgeflow.checks import estimate_onnx_memory, memory_plan, raise_on_failure, run_checks
    from edgeflow.targets import Target

    t = Target.load(target)
    plan = None
    if model is not None:
        est = estimate_onnx_memory(model, batch=t.batch_max)
        drift_bytes = 0
        if drift is not None:
            d = estimate_onnx_memory(drift, batch=1)
            drift_bytes = d.weight_bytes + d.peak_activation_bytes
        plan = memory_plan(t, weight_bytes=est.weight_bytes,
                           activation_bytes_per_image=est.activation_bytes_per_image,
                           drift_bytes=drift_bytes)
    quantized = model is not None and _has_qdq(model)
    checks = run_checks(t, precision=precision, sparse_2_4=sparse, use_dla=dla, calibration=calibration,
                        quantized_graph=quantized, plan=plan, trt_version=trt_version)
    out = {"target": t.name, "ok": all(c.ok for c in checks),
           "checks": [{"name": c.name, "ok": c.ok, "message": c.message} for c in checks],
           "memory_plan": plan.to_dict() if plan else None}
    emit(out, as_json=as_json, human="\n".join(
        f"[{'green' if c.ok else 'red'}]{'ok  ' if c.ok else 'FAIL'}[/] {c.name}: {c.message}"
        for c in checks))
    raise_on_failure(checks, target=t)


def _has_qdq(path: Path) -> bool:
    from edgeflow.export.int8 import count_qdq

    return count_qdq(path)["QuantizeLinear"] > 0
