"""Progress of long jobs: reported by library code, drawn only by whoever asked for it.

A long job takes `progress` (a `Progress`; None, False or `NO_PROGRESS` for none) and reports
each stage as it runs:

    with progress.stage("evaluation", total=len(weights), unit="weights") as advance:
        for weight in weights:
            ...
            advance(weight.name)

Library code never prints: the base class ignores every report. `TqdmProgress` draws one tqdm bar
per stage on stderr, with its rate and ETA (elapsed time only where the total is unknown, as for
loading and saving a package). The command line passes one; the Python API's `progress=True`
makes one (`as_progress`). Any other object with a `stage` method of the same shape (a notebook
widget, a logger, a test's recorder) works the same way.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator, Optional, Union

Advance = Callable[..., None]
"""`advance(item="", steps=1)`: `steps` more done; `item` names the thing just finished."""


def _ignore(item: str = "", steps: int = 1) -> None:
    return None


class Progress:
    """Receives the progress of long jobs, and ignores it."""

    @contextlib.contextmanager
    def stage(self, name: str, total: Optional[int] = None, unit: str = "steps") -> Iterator[Advance]:
        """A stage of `total` steps (None: unknown); yields `advance`."""
        yield _ignore


NO_PROGRESS = Progress()


class TqdmProgress(Progress):
    """One tqdm bar per stage on `file` (stderr by default). `disable=None` draws only where
    `file` is a terminal (as the command line does), False always, True never."""

    def __init__(self, file=None, disable: Optional[bool] = False, leave: bool = True):
        self.file, self.disable, self.leave = file, disable, leave

    @contextlib.contextmanager
    def stage(self, name: str, total: Optional[int] = None, unit: str = "steps") -> Iterator[Advance]:
        from tqdm import tqdm

        file = self.file if self.file is not None else sys.stderr
        bar = tqdm(total=total, desc=name, unit=f" {unit}", file=file, disable=self.disable, leave=self.leave, dynamic_ncols=True)

        def advance(item: str = "", steps: int = 1) -> None:
            if item:
                bar.set_postfix_str(item[:40], refresh=False)
            bar.update(steps)

        try:
            yield advance
        finally:
            bar.close()


def as_progress(progress: Union[bool, None, Progress]) -> Progress:
    """What a `progress=` argument asks for: True a `TqdmProgress`, None or False none, else itself."""
    if progress is True:
        return TqdmProgress()
    if progress is None or progress is False:
        return NO_PROGRESS
    if not callable(getattr(progress, "stage", None)):
        raise TypeError(f"progress must be True, False, None or an object with a stage() method like milcompress.progress.Progress, not {progress!r}")
    return progress
