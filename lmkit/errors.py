"""User-facing errors.

Every error a user can cause by bad input is an ``LmkitError``: its message is one line that
names the bad value and the fix. The CLI prints it to stderr and exits with code 2, without a
traceback. Internal invariants use ``assert``.
"""


class LmkitError(Exception):
    """Base class of errors caused by user input; the message names the problem and the fix."""


class InputError(LmkitError, ValueError):
    """A bad argument, option or data value."""


class OptionError(InputError, TypeError):
    """An unknown option, an option value of the wrong type or out of its range, or a problem
    whose fix is an option. The message names options by their parameter names
    (``vocab_size``); the CLI shows them as its flags (``--vocab-size``, ``cli.to_flags``), as
    it does for ``MemoryLimitError``, ``WorkerDiedError``, ``OutputError`` and ``OptionWarning``."""


class MissingPathError(LmkitError, FileNotFoundError):
    """A file or folder that should exist does not."""

    def __str__(self):  # FileNotFoundError would prefix "[Errno ...]" when given two args
        return self.args[0] if self.args else ""


class ModelFormatError(LmkitError, ValueError):
    """A saved model folder is missing pieces, corrupt, truncated or of another format version."""


class MemoryLimitError(LmkitError, ValueError):
    """A step would need more memory than the configured limit."""


class WorkerError(LmkitError, RuntimeError):
    """A task failed on a Dask worker (the message names the task and the worker's error)."""


class MissingDependencyError(LmkitError, ImportError):
    """An optional package a feature needs is not installed (the message names the pip extra)."""


class OutputError(LmkitError, OSError):
    """An output cannot be written: not writable, read-only or full file system, not a folder..."""

    def __str__(self):  # OSError would prefix "[Errno ...]" when given two args
        return self.args[0] if self.args else ""


class WorkerDiedError(LmkitError, RuntimeError):
    """A worker process ended without answering (killed, e.g. by the out-of-memory killer)."""


class OptionWarning(UserWarning):
    """A warning whose fix is an option, named by its parameter name (as ``OptionError``)."""
