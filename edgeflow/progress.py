"""Progress bars for long work: rich on stderr (stdout stays clean for --json), silent when off.

Laid out for an 80-column terminal: the label, a short bar, done/total and elapsed<remaining have
fixed widths and come first; the free-text description takes what is left and is the only part
that may be cut (at its end), so the numbers that say how far along the work is always show.
"""

from __future__ import annotations

from typing import Any

BAR_WIDTH = 10  # columns; rich's default (40) leaves an 80-column line no room for the numbers


class ProgressBar:
    """``ProgressBar(enabled, total, label)``; ``advance(text)``; ``close()`` (or a with-block).

    ``console``: where to draw (default: a rich Console on stderr); tests pass a recording one.
    """

    def __init__(self, enabled: bool, total: int, label: str, *, console: Any = None) -> None:
        self.progress = None
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.table import Column

            console = console or Console(stderr=True)

            def fixed(width: int) -> Column:
                return Column(no_wrap=True, min_width=width, max_width=width)

            widths = [len(label), BAR_WIDTH, 2 * len(str(total)) + 1, 7, 7]  # 7: 0:00:00
            # rich shrinks every column of a too-wide row, numbers included; a description that is
            # never wider than what is left (one space between columns) keeps the row in bounds
            room = max(8, console.width - sum(widths) - len(widths))
            self.progress = Progress(
                TextColumn(f"[bold]{label}", table_column=fixed(widths[0])),
                BarColumn(bar_width=BAR_WIDTH, table_column=fixed(widths[1])),
                MofNCompleteColumn(table_column=fixed(widths[2])),
                TimeElapsedColumn(table_column=fixed(widths[3])),
                TimeRemainingColumn(table_column=fixed(widths[4])),
                TextColumn("{task.description}", table_column=Column(
                    no_wrap=True, overflow="ellipsis", max_width=room)),
                console=console)
            self.progress.start()
            self.task = self.progress.add_task("", total=total)

    def advance(self, description: str = "", *, steps: int = 1) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=steps, description=description)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
