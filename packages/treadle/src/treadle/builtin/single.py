"""The ``single`` strategy: one process training on one device.

No process group, no wrapper, no collective: the ``Strategy`` defaults are the identity, so
this strategy only places the model on the backend's device.
"""

from __future__ import annotations

import torch

from treadle.components import Strategy


class SingleDeviceStrategy(Strategy):
    """One process, the model on ``backend.setup_device(0)``."""

    name = "single"

    def setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Convert the model for the precision, then move it to the device.

        The precision's ``convert_module`` is applied here, before any wrapping a subclass may
        add, so the loop does not call it a second time.
        """
        if self.root_device is None:
            self.setup_environment()
        model = self.precision.convert_module(model)
        return model.to(self.root_device)
