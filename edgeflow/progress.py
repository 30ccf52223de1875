"""Progress bars for long work: rich on stderr (stdout stays clean for --json), silent when off."""

from __future__ import annotations


class ProgressBar:
    """``ProgressBar(enabled, total, label)``; ``advance(text)``; ``close()`` (or a with-block)."""

    def __init__(self, enabled: bool, total: int, label: str) -> None:
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

            self.progress = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.description}"), TimeElapsedColumn(),
                                     TimeRemainingColumn(), console=Console(stderr=True))
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
