"""The pluggy markers, kept apart so that importing them costs nothing but pluggy."""

import pluggy

hookimpl = pluggy.HookimplMarker("treadle")
"""Decorate a function or method as the implementation of a ``treadle_*`` hook."""

hookspec = pluggy.HookspecMarker("treadle")
"""Used by ``treadle.hookspecs`` (and plugins that define hooks of their own)."""
