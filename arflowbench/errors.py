"""User-facing errors.

Every error a user can cause (bad config, unknown plugin, missing data, NaN loss) is an
`ArflowbenchError`. The CLI prints it as one line starting with ``error:`` and exits with code 2;
the full traceback only appears with ``--debug``.
"""

from __future__ import annotations


class ArflowbenchError(Exception):
    """An error caused by input or environment, reported to the user as one line."""

    exit_code = 2


class ConfigError(ArflowbenchError):
    """A matrix, spec or plugin option is invalid."""


class UnknownPluginError(ConfigError):
    """A plugin name is not registered."""


class PluginUnavailableError(ArflowbenchError):
    """A plugin is registered but cannot run here (missing dependency, no CUDA, ...)."""


class DataError(ArflowbenchError):
    """A dataset is missing or malformed."""


class DataNotFoundError(DataError):
    """A dataset's files are not on this machine (`validate` still lists its cells, warned)."""


class NonFiniteLossError(ArflowbenchError):
    """Training produced a NaN or infinite loss."""


class ResultsWriteError(ArflowbenchError):
    """A row or report could not be written (full disk, read-only folder); nothing was left torn."""


class DataMissingError(DataError):
    """Data a run needs has not been prepared on this machine yet (e.g. a latent cache or an
    evaluation reference on a GPU box). `validate` lists such cells as "data missing" with
    `hint` (the command to run first); `run` refuses them before any work."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(f"{message}: {hint}" if hint else message)
        self.hint = hint
