"""The compile stage that measures the result: few-shot accuracy, adaptation cost, latency, checks."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from edgeflow.pipeline.config import CompileConfig, parse_int_list
from edgeflow.pipeline.model_stages import CompileData

STEP_SWEEP = (1, 2, 5, 10, 20, 50)
# evaluate_adaptation's method names -> the report's
REPORT_NAMES = {"none": "none", "teacher": "finetune", "recenter": "recenter",
                "hyperflow-euler": "hyperflow"}


def fewshot(cfg: CompileConfig, data: CompileData, backbone_ckpt: Path, drift_ckpt: Path | None, *,
            progress: bool) -> dict[str, Any]:
    """No adaptation / fine-tuning (teacher) / HyperFlow on the same seeded novel-class episodes."""
    from edgeflow.adapt.apply import IntegratorSettings
    from edgeflow.adapt.evaluate import EvalConfig, evaluate_adaptation
    from edgeflow.adapt.teacher import TeacherConfig
    from edgeflow.adapt.theta import ThetaSpec
    from edgeflow.prune.finalize import load_pruned

    net = load_pruned(backbone_ckpt)
    drift = None
    if drift_ckpt is not None:
        from edgeflow.adapt.io import load_drift

        drift, spec, theta0, settings, dmeta = load_drift(drift_ckpt)
        teacher = TeacherConfig(**dmeta["teacher"])
        methods: tuple[str, ...] = ("none", "teacher", "hyperflow-euler")
        if settings.recenter:  # what the drift adds over its re-centring move
            methods = ("none", "teacher", "recenter", "hyperflow-euler")
    else:  # no drift: compare no adaptation with a default fine-tuning recipe
        spec = ThetaSpec.from_model(net, max_size=cfg.adapt.theta_max)
        theta0, settings, teacher = spec.get(net), IntegratorSettings(), TeacherConfig(lr=1e-3,
                                                                                         steps=10)
        methods = ("none", "teacher")
    ec = EvalConfig(ways=cfg.eval.ways, shots=tuple(parse_int_list(cfg.eval.shots, name="eval.shots")),
                    queries=cfg.eval.queries, episodes=cfg.eval.episodes, seed=cfg.eval.seed,
                    methods=methods, step_sweep=STEP_SWEEP if drift is not None else (),
                    timing_episodes=min(cfg.eval.episodes, 30), memory_episodes=2, full_episodes=0)
    res = evaluate_adaptation(net, spec, data.novel, data.preprocess, drift=drift, theta0=theta0,
                              settings=settings, teacher=teacher, config=ec, progress=progress)
    table = _table(res)
    curve: dict[str, list[dict]] = {}
    for shots, entry in res["by_shots"].items():
        if "euler_steps" in entry:
            none = entry["methods"]["none"]
            curve[shots] = [{"steps": 0, "acc": none["accuracy"], "ci95": none["ci95"]}] + [
                {"steps": int(s), "acc": v["accuracy"], "ci95": v["ci95"]}
                for s, v in entry["euler_steps"].items()]
    last = table[max(table, key=int)]  # cost at the largest shot count
    cost: dict[str, Any] = {
        "methods": {name: {"time_ms": r["adapt_ms"], "memory_bytes": None if r["adapt_peak_mib"]
                           is None else int(r["adapt_peak_mib"] * 2**20)} for name, r in last.items()},
        "memory_method": "adaptation step alone: peak of live PyTorch CPU allocations "
                         "(torch.profiler memory events)"}
    if "hyperflow" in last:  # extra over no adaptation, as a fraction of fine-tuning's extra
        hf, ft, none = last["hyperflow"], last["finetune"], last["none"]
        for key, field in (("time_ratio", "adapt_ms"), ("memory_ratio", "adapt_peak_mib")):
            base = none[field] or 0.0
            if ft[field] is not None and hf[field] is not None and ft[field] - base > 0:
                cost[key] = (hf[field] - base) / (ft[field] - base)
    out: dict[str, Any] = {"fewshot": table, "steps_curve": curve, "integrator": settings.to_dict(),
                           "teacher": teacher.to_dict(), "cost": cost}
    if data.cross:
        # the same methods minus fine-tuning (its cost is measured on the novel classes already,
        # and per episode it is the slowest by far), accuracy only
        cross = replace(ec, methods=tuple(m for m in methods if m != "teacher"), step_sweep=(),
                        episodes=cfg.eval.cross_episodes or cfg.eval.episodes,
                        timing_episodes=0, memory_episodes=0)
        out["cross_domain"] = {
            name: _table(evaluate_adaptation(net, spec, ds, data.preprocess, drift=drift,
                                             theta0=theta0, settings=settings, teacher=teacher,
                                             config=cross, progress=progress))
            for name, ds in data.cross.items()}
    return out


def _table(res: dict[str, Any]) -> dict[str, dict]:
    """evaluate_adaptation's result -> {shots: {report method name: accuracy, CI, gain, cost}}."""
    return {shots: {REPORT_NAMES[m]: {"acc": r["accuracy"], "ci95": r["ci95"], "gain": r.get("gain"),
                                      "median_ms": r["median_ms"], "extra_ms": r.get("extra_ms"),
                                      "adapt_ms": r["adapt_ms"], "adapt_peak_mib": r["adapt_peak_mib"]}
                    for m, r in entry["methods"].items()}
            for shots, entry in res["by_shots"].items()}


def adaptation_checks(table: dict[str, dict]) -> list[dict[str, Any]]:
    """A failing check per shot count where the bundle's adaptation scored below no adaptation on
    the compile's own few-shot evaluation (issue 17: a loss must be visible, not a footnote)."""
    out = []
    for shots, row in sorted(table.items(), key=lambda kv: int(kv[0])):
        if "hyperflow" not in row or "none" not in row:
            continue
        hf, none = row["hyperflow"]["acc"], row["none"]["acc"]
        out.append({"name": f"adaptation helps ({shots}-shot)", "ok": bool(hf >= none),
                    "message": f"HyperFlow {100 * hf:.2f}% vs no adaptation {100 * none:.2f}% "
                               f"({100 * (hf - none):+.2f} points on the same episodes)"
                               + ("" if hf >= none else "; deploy with Session.adapt(..., "
                                  "guard=True) or adapt.enabled = false")})
    return out


def latency(bundle: Path, *, precisions: list[str], repeats: int) -> dict[str, dict]:
    """ONNX Runtime CPU latency of the bundle (median ms) per precision it carries."""
    from edgeflow.runtime.bench import bench_session

    out = {}
    for p in precisions:
        r = bench_session(bundle, backend="onnxruntime", precision=p, repeats=repeats, warmup=3)
        cases = r["cases"]
        out[f"onnxruntime-{p}"] = {
            "batch1_ms": cases["backbone_b1"]["median_ms"],
            "batch32_ms": cases["backbone_b32"]["median_ms"],
            **{k: v["median_ms"] for k, v in cases.items() if k.startswith(("adapt", "predict",
                                                                            "no_adaptation"))}}
    return out


def target_checks(cfg: CompileConfig, bundle: Path) -> list[dict[str, Any]]:
    """The target's compile-time checks on what was actually built."""
    from edgeflow.checks import estimate_onnx_memory, memory_plan, run_checks
    from edgeflow.runtime.bundle import load_bundle
    from edgeflow.targets import Target

    target = Target.load(cfg.export.target)
    b = load_bundle(bundle)
    backbone = estimate_onnx_memory(bundle / "backbone.onnx", batch=1)
    drift_bytes = sum((bundle / f).stat().st_size for f in ("drift.onnx", "task_encoder.onnx")
                      if (bundle / f).exists())
    plan = memory_plan(target, weight_bytes=backbone.weight_bytes,
                       activation_bytes_per_image=backbone.activation_bytes_per_image,
                       drift_bytes=drift_bytes)
    precisions = list(b.manifest["precisions"])
    precision = target.pick_precision([*precisions, "fp16"] if target.has_gpu else precisions)
    checks = run_checks(target, precision=precision, sparse_2_4=cfg.prune.enabled and
                        cfg.prune.granularity == "n:m",
                        calibration=bundle / "calibration_sample.npy" if "int8" in precisions else None,
                        quantized_graph="int8" in precisions, plan=plan)
    return [{"name": c.name, "ok": c.ok, "message": c.message} for c in checks]
