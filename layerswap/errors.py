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
