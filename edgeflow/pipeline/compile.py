"""``run_compile``: backbone -> prune -> recover -> meta-train -> export -> INT8 -> engines ->
evaluate -> report, each a checkpointed stage (see :mod:`edgeflow.pipeline.stages`).

Layout of ``cfg.output``::

    config.toml        the resolved configuration of the last run (``--resume`` starts from it)
    bundle/            the deployable bundle (written atomically by the exporter)
    report/            report.md, PNG plots, metrics.json
    stages/<name>/     each stage's outputs + done.json (what --resume reuses)

``done.json`` records the sha256 and size of every file a stage produced, the bundle files that
export and calibrate wrote included; ``--resume`` reuses a stage only while they are intact and
says which file made it run a stage again (see :mod:`edgeflow.pipeline.stages`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeflow.pipeline.clock import StageClock, previous_times
from edgeflow.pipeline.config import SAVED_CONFIG, CompileConfig
from edgeflow.pipeline.stages import StageRunner


@contextmanager
def _torch_threads(n: int):
    """Per-task adaptation works on ~25-image tensors, where torch's intra-op thread pool costs more
    than it gives (measured: 6 trajectory tasks took 5 s on 1 thread, 77 s on 2 on a busy 2-core
    machine). Those stages run on ``n`` threads; the setting is restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class CompileResult:
    """What ``edgeflow compile`` prints and returns."""

    output: Path
    bundle: Path
    report: Path
    metrics: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        m = self.metrics
        head: dict[str, Any] = {"bundle": str(self.bundle), "report": str(self.report),
                                "seconds": m.get("total_seconds")}
        if m.get("prune"):
            head["sparsity"] = m["prune"]["sparsity"]
            head["top1_after_prune"] = m["prune"]["after"]["top1"]
        for shots, row in (m.get("fewshot") or {}).items():
            for method, r in row.items():
                head[f"{shots}shot_{method}"] = r["acc"]
        head["checks_failed"] = [c["name"] for c in m.get("checks", []) if not c["ok"]]
        return head

    def human_summary(self) -> str:
        """The text ``edgeflow compile`` prints: percentages, and the report's method names."""
        from edgeflow.pipeline.report import engines_note, method_labels

        s = self.summary()
        labels = method_labels(self.metrics)
        lines = [f"[bold green]bundle[/] {s['bundle']}", f"[bold]report[/] {s['report']}"]
        if "sparsity" in s:
            lines.append(f"pruned to {100 * s['sparsity']:.1f}% sparsity, held-out top-1 "
                         f"{100 * s['top1_after_prune']:.1f}% (base classes)")
        fewshot = self.metrics.get("fewshot") or {}
        if fewshot:  # a method per row, a shot count per column: fits 80 columns, unlike a line
            present = {m for row in fewshot.values() for m in row}
            methods = [m for m in labels if m in present] + sorted(present - set(labels))
            width = max(len(labels.get(m, m)) for m in methods)
            lines.append(f"few-shot accuracy on novel classes, % ± 95% CI, "
                         f"{self.metrics.get('ways', '?')}-way")
            lines.append("  " + " " * width + "".join(f"  {s + '-shot':>11}" for s in fewshot))
            for m in methods:
                cells = [row.get(m) for row in fewshot.values()]
                lines.append(f"  {labels.get(m, m):<{width}}" + "".join(
                    f"  {100 * c['acc']:5.1f} ± {100 * c['ci95']:3.1f}" if c else f"  {'n/a':>11}"
                    for c in cells))
        if engines_note(self.metrics):
            lines.append(engines_note(self.metrics))
        failed = s["checks_failed"]
        lines.append("target checks: " + ("all passed" if not failed else f"FAILED {failed}"))
        lines.append(f"total {s['seconds']:.0f} s")
        return "\n".join(lines)


def _validate(cfg: CompileConfig) -> None:
    """Fail in the first second on names that would otherwise fail minutes later."""
    from edgeflow.adapt.apply import IntegratorSettings
    from edgeflow.errors import ConfigError, unknown_name
    from edgeflow.models import IMAGENET, PRETRAINED, check_model_name, is_custom
    from edgeflow.prune.config import METHODS, parse_granularity
    from edgeflow.targets import Target

    check_model_name(cfg.backbone.model)
    if cfg.backbone.weights == IMAGENET and cfg.backbone.model not in PRETRAINED:
        raise ConfigError(f"backbone.weights = {IMAGENET!r}: {cfg.backbone.model!r} has no "
                          f"published ImageNet weights here; models that do: "
                          f"{', '.join(PRETRAINED)} (or give a checkpoint path)")
    if not is_custom(cfg.backbone.model) and cfg.backbone.head:
        raise ConfigError(f"backbone.head is for your own model (package.module:build); zoo model "
                          f"{cfg.backbone.model!r} has its head: leave --head empty")
    if cfg.prune.method not in METHODS:
        raise unknown_name("pruning method", cfg.prune.method, list(METHODS))
    parse_granularity(cfg.prune.granularity)
    IntegratorSettings(method=cfg.adapt.method)
    Target.load(cfg.export.target)
    # types, bounds and cross-field rules (class overlap, epochs without weights) are checked
    # when the CompileConfig is built (edgeflow.pipeline.validate)


def describe_custom_model(cfg: CompileConfig, log: Callable[[str], None]) -> dict[str, Any]:
    """For your own model: build it, check that EdgeFlow can use it (head, BatchNorm, a trial ONNX
    export), log what was chosen, and return the digest of its source file (part of the backbone
    stage's cache key, so ``--resume`` retrains after the model's code changed). Zoo models: {}."""
    from edgeflow.export.model_check import check_model
    from edgeflow.models import is_custom
    from edgeflow.models.custom import source_digest

    b = cfg.backbone
    if not is_custom(b.model):
        return {}
    checked = check_model(b.model, head=b.head, input_size=cfg.data.size,
                          theta_max=cfg.adapt.theta_max, weights=b.weights or None)
    for line in checked.lines():
        log(line)
    return {"model_source": source_digest(b.model)}


def planned_stages(cfg: CompileConfig) -> list[str]:
    """The stages ``run_compile`` runs for ``cfg``, in order."""
    from edgeflow.pipeline.deploy_stages import wants_int8

    return ["backbone", *(["prune", "recover"] if cfg.prune.enabled else []),
            *(["meta-train"] if cfg.adapt.enabled else []), "export",
            *(["calibrate"] if wants_int8(cfg) else []), "engines", "evaluate"]


def save_config(cfg: CompileConfig, out: Path) -> Path:
    """Write ``cfg`` as ``out/config.toml`` (atomically: an interrupted write leaves the old one)."""
    path = out / SAVED_CONFIG
    tmp = path.with_name(f".{SAVED_CONFIG}.tmp")
    tmp.write_text(cfg.to_toml())
    tmp.replace(path)
    return path


def run_compile(cfg: CompileConfig, *, resume: bool = False, progress: bool = False,
                log: Callable[[str], None] = print) -> CompileResult:
    """Run every stage of the compile for ``cfg``; see the module docstring for the layout."""
    from edgeflow.pipeline import adapt_stages, bundle_state, deploy_stages, eval_stage, model_stages
    from edgeflow.pipeline.report import render_report

    _validate(cfg)
    model_source = describe_custom_model(cfg, log)
    t0 = time.perf_counter()
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    # saved before any stage runs, so an interrupted run can be resumed by its folder alone
    save_config(cfg, out)
    planned = planned_stages(cfg)
    clock = StageClock(planned, previous_times(out, planned), start=t0)
    runner = StageRunner(out, resume=resume, log=log)
    data = model_stages.prepare_data(cfg, progress=progress)
    base = {"data": cfg.digest("data"), "seed": cfg.seed}

    def stage(name: str, fn, sections: tuple[str, ...], after: tuple[str, ...] = (),
              extra: dict[str, Any] | None = None, **verify: Any):
        log(clock.line(name))
        return runner.run(name, fn, parts={**base, "config": cfg.digest(*sections), **(extra or {})},
                          after=after, **verify)

    bb = stage("backbone", lambda d: model_stages.train_backbone(cfg, data, d, progress=progress),
               ("backbone",), extra={**model_stages.resolved(model_stages.backbone_train_config(cfg)),
                                     **model_source})
    current, chain = bb.dir / bb.outputs["checkpoint"], ("backbone",)
    prune_metrics: dict[str, Any] = {}
    if cfg.prune.enabled:
        pr = stage("prune", lambda d: model_stages.prune_backbone(cfg, data, current, d,
                                                                  progress=progress),
                   ("prune", "backbone"), chain,
                   extra=model_stages.resolved(model_stages.prune_config(cfg)))
        pruned = pr.dir / pr.outputs["checkpoint"]
        rc = stage("recover", lambda d: model_stages.recover(cfg, data, pruned, d, progress=progress),
                   ("prune", "backbone"), ("prune",),
                   extra=model_stages.resolved(model_stages.recovery_train_config(cfg)))
        current, chain = rc.dir / rc.outputs["checkpoint"], ("recover",)
        po = pr.outputs
        prune_metrics = {
            "method": cfg.prune.method, "granularity": cfg.prune.granularity,
            "requested": cfg.prune.sparsity, "sparsity": po["sparsity"],
            "layers": [{"name": k, "density": v} for k, v in po["density"].items()],
            "before": {"top1": bb.outputs["top1"], "params": bb.outputs["params"],
                       "macs": po["dense_macs"]},
            "after": {"top1": rc.outputs["top1"], "params": po["params"],
                      "nonzero_params": po["nonzero_params"], "macs": po["macs"]},
            "top1_before_recovery": po["top1"]}
    drift_ckpt = None
    adapt_out: dict[str, Any] = {}
    if cfg.adapt.enabled:
        with _torch_threads(1):
            mt = stage("meta-train", lambda d: adapt_stages.meta_train_drift(cfg, data, current, d,
                                                                             progress=progress),
                       ("adapt",), chain,
                       extra=model_stages.resolved(*adapt_stages.adapt_configs(cfg)))
        drift_ckpt, adapt_out = mt.dir / mt.outputs["drift"], mt.outputs
        chain = (*chain, "meta-train")
    bundle = out / "bundle"
    # export and calibrate write into the bundle: what each put there is recorded with the stage,
    # and reusing the stage needs those bytes, and a manifest listing them, still in place
    listed = {"check": lambda record: bundle_state.lists(bundle, record["products"], out)}

    def export_check(record: dict[str, Any]) -> str | None:
        if bundle_state.EXPORT_MANIFEST not in record["files"]:  # needed to restore the bundle
            return f"{bundle_state.EXPORT_MANIFEST} not recorded"
        return listed["check"](record)
    headline = {"backbone_top1": bb.outputs["top1"], **({"sparsity": prune_metrics["sparsity"]}
                                                         if prune_metrics else {})}
    def export(d: Path) -> dict[str, Any]:
        res = deploy_stages.export_stage(cfg, data, current, drift_ckpt, bundle, metrics=headline)
        bundle_state.keep_export_manifest(bundle, d)
        return res

    ex = stage("export", export, ("export", "adapt"), chain,
               products=lambda _: bundle_state.members(bundle), check=export_check)
    chain = ("export",)
    int8: dict[str, Any] = {}
    if deploy_stages.wants_int8(cfg):
        exported = {(out / name).absolute() for name in ex.products}

        def calibrate(d: Path) -> dict[str, Any]:
            if bundle_state.restore_export(bundle, ex.dir):
                log("bundle: files calibrate added are damaged; restored the bundle export wrote")
            return deploy_stages.calibrate_stage(cfg, data, bundle, d)

        cal = stage("calibrate", calibrate, ("export",), chain,
                    products=lambda _: [p for p in bundle_state.members(bundle)
                                        if p.absolute() not in exported], **listed)
        int8, chain = cal.outputs, ("calibrate",)
    bundle_state.verified(bundle)
    eng = stage("engines", lambda d: deploy_stages.engines_stage(cfg, bundle), ("export",), chain)
    def evaluate(d: Path) -> dict[str, Any]:
        with _torch_threads(1):
            shots = eval_stage.fewshot(cfg, data, current, drift_ckpt, progress=progress)
        return {**shots,
                "latency": eval_stage.latency(bundle, repeats=30,
                                              precisions=["fp32", *(["int8"] if int8 else [])]),
                "checks": [*eval_stage.target_checks(cfg, bundle),
                           *eval_stage.adaptation_checks(shots["fewshot"])]}

    ev = stage("evaluate", evaluate, ("eval",), chain)
    metrics: dict[str, Any] = {
        "source": {"model": cfg.backbone.model, "data": cfg.data.base, "target": cfg.export.target},
        "bundle": str(bundle), "ways": cfg.eval.ways, "episodes": cfg.eval.episodes,
        "config": cfg.to_dict(), "backbone": {"top1": bb.outputs["top1"],
                                              "params": bb.outputs["params"]},
        "prune": prune_metrics, "adapt": adapt_out, "export": ex.outputs, "int8": int8,
        "engines": eng.outputs, **ev.outputs,
        "checks": deploy_stages.note_unbuilt_engines(cfg, ev.outputs["checks"], eng.outputs),
        "seconds": {n: {"seconds": r.seconds, "reused": r.skipped}
                    for n, r in runner.results.items()},
        "total_seconds": time.perf_counter() - t0}
    report = render_report(metrics, out / "report")
    return CompileResult(out, bundle, report, metrics)
