"""The compile's overall progress line: ``stage k/N name``, time elapsed, and what is left.

Stage times differ by orders of magnitude (meta-training takes most of a default compile, the
engines stage a fraction of a second), so an average over finished stages would be a made-up
estimate. The only honest source is a measurement of the same stages: when the output folder holds
an earlier run, its ``stages/*/done.json`` times are read before anything is overwritten, and the
line says how long that run took for the stages still to come ("last run here: 4:10 from here
on"). Stages that ``--resume`` reuses take about no time, so where some are reused it over-counts.
A first run shows elapsed time only.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgeflow.pipeline.stages import DONE


def _clock(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def previous_times(work: Path, names: list[str]) -> dict[str, float]:
    """Seconds per stage recorded by the last run in ``work`` (stages it did not finish absent)."""
    out: dict[str, float] = {}
    for name in names:
        done = work / "stages" / name / DONE
        try:
            out[name] = float(json.loads(done.read_text())["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


@dataclass
class StageClock:
    """``line(name)`` -> 'stage 3/8 recover, 1:02 elapsed; last run here: 4:10 from here on' (the
    last clause only when an earlier run in the folder measured every stage still to come)."""

    planned: list[str]
    previous: dict[str, float] = field(default_factory=dict)
    start: float = field(default_factory=time.perf_counter)

    def line(self, name: str) -> str:
        k = self.planned.index(name) + 1
        text = (f"stage {k}/{len(self.planned)} {name}, "
                f"{_clock(time.perf_counter() - self.start)} elapsed")
        rest = self.planned[k - 1:]
        if all(s in self.previous for s in rest):
            # a measurement, not a forecast: stages reused this time take about nothing
            text += f"; last run here: {_clock(sum(self.previous[s] for s in rest))} from here on"
        return text
