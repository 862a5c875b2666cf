"""Progress reporting: stage banners through ``logging`` (logger ``"lmkit"``), bars through tqdm.

The library never prints. Messages go to the ``lmkit`` logger at INFO; with ``verbose=True``
(the default of ``lmkit.train`` and of the CLI) ``reporting`` attaches a plain stderr handler for
the duration of the call unless the application configured the logger itself. Bars are tqdm on
stderr, shown only on a terminal and only when verbose.
"""
from __future__ import annotations

import contextlib
import logging
import sys

logger = logging.getLogger("lmkit")
logger.addHandler(logging.NullHandler())
_state = {"verbose": False}


def log(message: str) -> None:
    """One progress line (INFO on the ``lmkit`` logger)."""
    logger.info(message)


@contextlib.contextmanager
def reporting(verbose: bool = True):
    """Show the ``lmkit`` logger's INFO lines on stderr while the block runs (if verbose)."""
    own = verbose and not any(not isinstance(h, logging.NullHandler) for h in logger.handlers)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    old_level, old_verbose = logger.level, _state["verbose"]
    if own:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    elif not verbose:  # a quiet call inside a verbose one (e.g. cross-fitting's fold models)
        logger.setLevel(logging.WARNING)
    _state["verbose"] = verbose
    try:
        yield
    finally:
        _state["verbose"] = old_verbose
        if own:
            logger.removeHandler(handler)
        logger.setLevel(old_level)


def bar(total=None, desc: str = "", unit: str = "tok", show: bool = True):
    """A tqdm bar on stderr (hidden when not ``show``, not verbose or not a terminal). A hidden
    bar is a ``_Hidden`` stand-in, so a run with no bar never imports tqdm (issue 21, start-up)."""
    return _stderr_bar(show and _state["verbose"], total=total, desc=desc, unit=unit,
                       unit_scale=True)


def terminal_bar(desc: str = "", unit: str = "doc", show: bool = True):
    """A tqdm bar on stderr whenever ``show`` and stderr is a terminal, verbose or not
    (``lmkit score``'s bar, which its ``progress`` option alone decides); else ``_Hidden``."""
    return _stderr_bar(show, desc=desc, unit=unit)


def _stderr_bar(show: bool, **options):
    """tqdm on stderr with ``options`` when ``show`` and stderr is a terminal, else a
    ``_Hidden`` stand-in (tqdm not imported)."""
    if not (show and _is_terminal(sys.stderr)):
        return _Hidden()
    from tqdm import tqdm
    return tqdm(file=sys.stderr, leave=False, **options)


def _is_terminal(stream) -> bool:
    """tqdm's own test for ``disable=None``: hidden only on a stream whose ``isatty()`` is false
    (a stream without ``isatty`` gets a bar)."""
    return not hasattr(stream, "isatty") or bool(stream.isatty())


class _Hidden:
    """The methods lmkit calls on a bar, doing nothing (tqdm's ``disable=True`` bar, untouched)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        pass

    def set_postfix(self, *args, **kwargs):
        pass

    def set_postfix_str(self, *args, **kwargs):
        pass

    def close(self):
        pass
