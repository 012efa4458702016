"""Exceptions raised by advlab.

Every error a user can cause derives from :class:`AdvlabError` and carries a message that names
the problem and the fix. The CLI prints such errors as one line, without a traceback.
"""

from __future__ import annotations


class AdvlabError(Exception):
    """Base class for user-facing advlab errors."""


class InputError(AdvlabError, ValueError):
    """Bad tensors: wrong shape or dtype, NaN/inf, values outside the threat model's box."""


class ConfigError(AdvlabError, ValueError):
    """Bad parameters: negative eps, unknown norm, out-of-range hyper-parameters."""


class UnknownNameError(AdvlabError, KeyError):
    """A name that is not in a registry."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class DataError(AdvlabError, OSError):
    """A dataset that is missing, malformed or corrupt."""


class CheckpointError(AdvlabError, OSError):
    """A model or training checkpoint that is missing, corrupt or unsafe to load."""


class ModelOutputError(AdvlabError, ValueError):
    """A model whose outputs are NaN/inf or have the wrong shape."""


class AccessError(ConfigError):
    """An oracle asked for more than it answers: gradients or scores from a label-only model."""


class BudgetExhausted(AdvlabError):
    """A query budget would be exceeded; the batch was not sent.

    Attacks catch it and return what they found so far, with the reason in
    :attr:`advlab.results.AttackResult.stopped`.
    """


class LeaseLost(AdvlabError):
    """Another process took over a run this process was writing (this one had stalled past its
    lease); the run and its results now belong to the other process."""
