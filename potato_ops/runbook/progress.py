"""A ``tqdm.auto`` progress bar for bulk operations: a widget in notebooks, a bar in terminals.

The library reports progress through a callback and never draws; the surfaces (the command
line and the runbook notebooks) pass this one.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Never

from tqdm.auto import tqdm

from potato_ops import Progress


class ProgressBar:
    """A progress callback that draws a ``tqdm.auto`` bar (a widget in notebooks).

    Use it as a context manager, so the bar is closed whatever happens::

        with ProgressBar() as bar:
            storage.bulk_rebuild_users(ids, config, progress=bar)
    """

    def __init__(self, *, disable: bool = False, desc: str = "rebuilding users") -> None:
        self.disable = disable
        self.desc = desc
        self._bar: tqdm[Never] | None = None
        self._postfix = ""

    def __call__(self, progress: Progress) -> None:
        bar = self._bar
        if bar is None:
            bar = self._bar = tqdm(
                total=progress.total_users,
                initial=progress.processed_users,
                desc=self.desc,
                unit="user",
                disable=self.disable,
                file=sys.stderr,
            )
        bar.update(progress.processed_users - bar.n)
        postfix = f"failed={progress.failed_users}" if progress.failed_users else ""
        if progress.waiting:  # throttled, outside its window, or paused: say why it does not move
            postfix = f"{postfix}, {progress.waiting}" if postfix else progress.waiting
        if postfix != self._postfix:
            self._postfix = postfix
            bar.set_postfix_str(postfix, refresh=True)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.close()
