"""A quiet console (`report.quiet=true`, the default): one progress bar per stage, then the tables.

What libraries print inside a job (lm-eval's per-batch bars and warnings, transformers' loading
bars, a `git` error lm-eval provokes outside a checkout) goes to `<run dir>/console.log`
instead: `quiet(...)` names that file for the job, `muted()` sends both output streams there
(file descriptors 1 and 2, so child processes and C code follow) for a noisy call.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

_LOG: list[Path] = []  # the log file of the job that is running quietly (at most one)


@contextlib.contextmanager
def quiet(enabled: bool, log: Path) -> Iterator[None]:
    """For the duration of a job: `muted()` writes into `log`; transformers' bars are off."""
    if not enabled:
        yield
        return
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    _LOG.append(log)
    try:
        yield
    finally:
        _LOG.remove(log)
        if bars:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def muted() -> Iterator[None]:
    """Everything written to stdout / stderr inside goes to the job's console.log (nothing
    changes outside `quiet(True, ...)`)."""
    if not _LOG:
        yield
        return
    _LOG[-1].parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(_LOG[-1], "a", encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield
        finally:
            for stream in (sys.stdout, sys.stderr, log):
                stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
