"""Progress bars on an 80-column terminal: the numbers always show, only the description is cut."""

import io

from rich.console import Console

from edgeflow.progress import ProgressBar


def _render(label: str, description: str, *, total: int = 1200) -> str:
    buf = io.StringIO()
    with ProgressBar(True, total, label, console=Console(file=buf, width=80)) as bar:
        bar.advance(description, steps=total // 2)
    return buf.getvalue().splitlines()[-1].rstrip()


def test_label_counts_and_times_survive_a_long_description():
    line = _render("hyperflows", "a description far longer than what is left of an eighty-column "
                   "line once the bar and the numbers are drawn")
    assert len(line) <= 80
    assert line.startswith("hyperflows ━") and " 600/1200 0:00:0" in line, line
    assert line.split()[0] == "hyperflows" and "…" not in line.split(" a description")[0]


def test_the_pruning_description_fits_whole():
    # what edgeflow.prune.hyperflows writes, with a four-digit step count
    line = _render("hyperflows", "ep 5/5 sparsity 0.502 acc 0.815", total=9999)
    assert len(line) <= 80 and line.endswith(" ep 5/5 sparsity 0.502 acc 0.815"), line
