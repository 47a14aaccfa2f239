"""Progress bars for long stages: tokens/s and ETA; quiet enough for log files."""

import sys

from tqdm.auto import tqdm


def progress(**kwargs) -> tqdm:
    """A tqdm bar that refreshes twice a second on a terminal and every 10 s in a log file."""
    interactive = sys.stderr.isatty()
    return tqdm(mininterval=0.5 if interactive else 10.0, dynamic_ncols=True, **kwargs)
