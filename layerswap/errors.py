"""One exception family for every mistake a user can make.

Each error carries a one-line message that says what is wrong and what to do, and a documented
exit code that the CLI returns. The CLI prints the message only, never a traceback.
"""

from __future__ import annotations


class LayerswapError(Exception):
    """Base of all user-facing errors. ``exit_code`` is what the CLI exits with."""

    exit_code: int = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class InputPathError(LayerswapError):
    """A path is missing, unreadable, or not what the command expects."""

    exit_code = 3


class CheckpointError(LayerswapError):
    """A checkpoint is corrupt, truncated, pickled, or otherwise unusable."""

    exit_code = 4


class IncompatibleModelsError(LayerswapError):
    """Experts, adapters and base do not share layers, names, shapes or vocabularies."""

    exit_code = 5


class ConfigError(LayerswapError):
    """A config file or option is malformed, unknown or out of range."""

    exit_code = 6


class DataError(LayerswapError):
    """A data file is missing, empty, or lacks the named fields."""

    exit_code = 7


class OutputExistsError(LayerswapError):
    """The output folder exists and ``--overwrite`` was not given."""

    exit_code = 8


class WriteFailedError(LayerswapError):
    """Writing an output failed (disk full, permissions); the temporary output was removed."""

    exit_code = 9


class NumericalError(LayerswapError):
    """NaN or Inf where a finite number is required."""

    exit_code = 10


EXIT_CODES: dict[str, int] = {
    cls.__name__: cls.exit_code
    for cls in (
        LayerswapError,
        InputPathError,
        CheckpointError,
        IncompatibleModelsError,
        ConfigError,
        DataError,
        OutputExistsError,
        WriteFailedError,
        NumericalError,
    )
}


#: OS errors that say the environment failed (a full disk, too many open files), not the program.
_ENVIRONMENT_ERRNOS = {28: "no space left on the device", 122: "disk quota exceeded", 24: "too many open files",
                       23: "too many open files in the system", 5: "an input/output error", 30: "a read-only file system"}  # fmt: skip


def environment_error(exc: OSError, where: str | None = None) -> WriteFailedError | None:
    """The one line for an OS failure of the environment that reached the CLI (None: not one of those).

    Outputs written through :mod:`layerswap.io.atomic` say "nothing was written" themselves; this line,
    for whatever escaped them (standard output on a full device, a log), does not claim it."""
    what = _ENVIRONMENT_ERRNOS.get(exc.errno or 0)
    if what is None:
        return None
    place = where or exc.filename or "an output (or standard output)"
    fix = "raise the limit (ulimit -n 4096)" if exc.errno in (23, 24) else "free space or write elsewhere"
    return WriteFailedError(f"writing {place} failed: {what}; {fix}, then rerun the command")
