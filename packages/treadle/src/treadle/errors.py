"""The errors treadle reports to users as one clear message instead of a traceback.

``TreadleError.exit_code`` is what the ``treadle`` command exits with: 2 for a usage problem
(wrong value, missing plugin, bad config), 1 for a failure while running (corrupt checkpoint).
"""

from __future__ import annotations

DEBUG_ENV = "TREADLE_DEBUG"
DEBUG_HINT = f"(set {DEBUG_ENV}=1 to see the full traceback)"


class TreadleError(Exception):
    """Base of the errors whose message is meant for the user."""

    exit_code = 1


class UsageError(TreadleError, ValueError):
    """The user asked for something that cannot work: a wrong value, an unknown name."""

    exit_code = 2


class PluginError(UsageError):
    """A plugin is missing, broken, or conflicts with another one."""


class CheckpointError(TreadleError):
    """A checkpoint is missing, incomplete, or does not match its manifest."""
