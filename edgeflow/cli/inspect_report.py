"""`edgeflow inspect` helpers: the human report, and what pruning did to the backbone.

A channel-pruned backbone has no zero weights (its channels are gone), so "0.00% of conv weights
zero" said nothing about it. What it has is fewer parameters, fewer multiply-accumulates and
narrower layers: those are read from the exported graph itself (``onnx``, which ships with
EdgeFlow; no torch), and set against the unpruned backbone where the manifest records it. The
zero-weight fraction stays the measure for unstructured and 2:4 pruning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape

from edgeflow.cli.common import console
from edgeflow.runtime.graph_stats import graph_structure

# keys of the manifest's free-form sparsity section that describe the unpruned backbone, when
# the exporter records them (compile knows them: its prune stage measures both)
DENSE_KEYS = {"params": "dense_params", "macs": "dense_macs", "widths": "dense_widths"}


def _num(v: object) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def structure(path: Path, man: dict[str, Any]) -> dict[str, Any]:
    """What pruning did: method, the backbone graph's size, and the unpruned reference if recorded."""
    sp = man.get("sparsity") or {}
    metrics = man.get("metrics") or {}
    res: dict[str, Any] = {"method": sp.get("method"), "granularity": sp.get("granularity"),
                           "requested": sp.get("requested"),
                           "zero_weight_fraction": sp.get("fraction"),
                           "two_four": sp.get("two_four") is True,
                           # compile's headline: share of the unpruned backbone's conv+linear
                           # weights gone (removed channels count, unlike zero_weight_fraction)
                           "removed_fraction": _num(metrics.get("sparsity")),
                           "unpruned": {k: sp[v] for k, v in DENSE_KEYS.items() if v in sp} or None}
    try:
        res.update(graph_structure(path / man["graphs"]["backbone"]["file"]))
    except Exception as exc:  # a report line, never a failed inspect
        res["graph_error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
    return res


def _ratio(now: object, before: object) -> str:
    n, b = _num(now), _num(before)
    if n is None:
        return str(now)
    return f"{n:,.0f} of {b:,.0f} unpruned ({n / b:.1%})" if b else f"{n:,.0f}"


def structure_lines(st: dict[str, Any]) -> list[str]:
    """Human lines for :func:`structure`."""
    lines = []
    zero = _num(st.get("zero_weight_fraction"))
    channel = st.get("granularity") == "channel"
    pruned = bool(st.get("method") or st.get("granularity"))
    if pruned:
        req = _num(st.get("requested"))
        line = (f"pruning: {st.get('method')}, {st.get('granularity')} granularity"
                + (f", requested {req:.1%}" if req is not None else ""))
        if st.get("removed_fraction") is not None:
            line += f"; {st['removed_fraction']:.1%} of the unpruned backbone's weights removed"
        lines.append(line)
    dense = st.get("unpruned") or {}
    if "params" in st:
        macs = st.get("macs_per_image")
        lines.append(f"backbone: parameters {_ratio(st['params'], dense.get('params'))}; MACs per "
                     f"image {_ratio(macs, dense.get('macs')) if macs is not None else 'unknown'}"
                     + ("" if dense or not pruned else
                        " (the unpruned backbone is not recorded in this manifest)"))
        if channel:
            before = dense.get("widths") if isinstance(dense.get("widths"), dict) else {}
            widths = ", ".join(f"{x['layer']} {x['width']}"
                               + (f"/{before[x['layer']]}" if x["layer"] in before else "")
                               for x in st["layers"])
            lines.append(f"layer widths (output channels{', now/unpruned' if before else ''}): "
                         f"{widths}")
    elif st.get("graph_error"):
        lines.append(f"backbone structure unavailable: {st['graph_error']}")
    raw = st.get("zero_weight_fraction")
    if raw is not None and not (channel and zero == 0):
        lines.append(f"zero weights: {_fmt(raw, '.2%')} of conv weights"
                     f"{' (2:4 pattern)' if st.get('two_four') else ''}")
    return lines


def print_inspect(path: Path, man: dict, res: dict) -> None:
    """The human form of ``edgeflow inspect``."""
    from rich.table import Table

    t = Table(title=escape(f"{path} (schema {man['schema_version']})"))
    for col in ("file", "bytes", "sha256", "status"):
        t.add_column(col)
    for f in res["files"]:
        color = "green" if f["status"] == "ok" else "red"
        t.add_row(escape(f["file"]), str(f["bytes"]), f["sha256"][:16],
                  f"[{color}]{escape(f['status'])}[/]")
    console.print(t)
    console.print(f"fingerprint: {res['fingerprint']}", highlight=False, markup=False)
    if not res["manifest_digest"]:
        console.print("manifest: schema version 1, no manifest_digest: an edited value would go "
                      "unnoticed; re-export the bundle, or pin it with --expect", highlight=False,
                      markup=False)
    sig = res["signature"]
    console.print("signature: " + ("none" if sig is None else
                                   f"key {sig['key_id']}, " + ("verified" if sig["verified"] else
                                   "for this manifest (not verified: give --trusted-key)"
                                   if sig["for_this_manifest"] else "STALE (signs another manifest)")),
                  highlight=False, markup=False)
    if res["unlisted"]:
        console.print(f"unlisted (not verified, never read): {', '.join(res['unlisted'][:20])}",
                      highlight=False, markup=False)
    for g, spec in man["graphs"].items():
        ins = ", ".join(f"{i['name']} {i['dtype']}{i['shape']}" for i in spec["inputs"])
        outs = ", ".join(f"{o['name']} {o['dtype']}{o['shape']}" for o in spec["outputs"])
        console.print(escape(f"{g}: {ins} -> {outs}"), highlight=False)
    a = man["adaptation"]
    console.print(f"theta: {res['theta_size']} values over {res['theta_layers']} layers; "
                  f"adaptation: {a.get('mode')} ({a['integrator']['method']}, "
                  f"{a['integrator']['steps']} steps), metric {a['metric']}", highlight=False,
                  markup=False)
    # sparsity and metrics are informational: the schema fixes only their outer type, so a value
    # of another type is shown as it is (_fmt) instead of breaking the format
    # no structure when the backbone's hash did not check out (the table shows why)
    for x in structure_lines(res["structure"]) if res["structure"] is not None else []:
        console.print(x, highlight=False, markup=False)
    console.print(f"precisions: {', '.join(man['precisions'])}; target: {man.get('target')}",
                  highlight=False, markup=False)
    parity = ((man.get("metrics") or {}).get("parity") or {})
    parity = parity.get("backbone") if isinstance(parity, dict) else None
    if isinstance(parity, dict) and parity:
        console.print(f"export parity: max abs diff {_fmt(parity.get('max_abs_diff_theta0'), '.2e')} "
                      f"at theta0 on {parity.get('images')} real images", highlight=False,
                      markup=False)


def _fmt(v: object, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)[:40]
