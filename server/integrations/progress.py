"""How a long sync shows where it is: a progress bar on a terminal, log lines otherwise (pipes, CI, the service's
own logs). The Notion sync and `sixshop-agent ingest` share it: one step per document."""

from __future__ import annotations

import logging
import sys
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Progress(Protocol):
    def start(self, total: int) -> None: ...
    def advance(self, title: str, outcome: str) -> None: ...
    def stop(self) -> None: ...


class LogProgress:
    """Plain log lines."""

    def __init__(self, label: str = "notion", noun: str = "pages") -> None:
        self.label, self.noun = label, noun
        self.total = 0
        self.done = 0

    def start(self, total: int) -> None:
        self.total = total
        log.info("%s: %d %s", self.label, total, self.noun)

    def advance(self, title: str, outcome: str) -> None:
        self.done += 1
        log.info("%s: [%d/%d] %s: %s", self.label, self.done, self.total, outcome, title)

    def stop(self) -> None:
        pass


class RichProgress:
    """A progress bar on a terminal."""

    def __init__(self, label: str = "notion") -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                  TextColumn("{task.description}"), transient=False)
        self._task: Any = None

    def start(self, total: int) -> None:
        self._progress.start()
        self._task = self._progress.add_task("", total=total)

    def advance(self, title: str, outcome: str) -> None:
        self._progress.update(self._task, advance=1, description=f"{outcome}: {title[:40]}")

    def stop(self) -> None:
        self._progress.stop()


def default_progress(label: str = "notion", noun: str = "pages") -> Progress:
    return RichProgress(label) if sys.stderr.isatty() else LogProgress(label, noun)
