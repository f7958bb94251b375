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
        """Move the model to the device (the loop has applied the precision's ``convert_module``)."""
        if self.root_device is None:
            self.setup_environment()
        return model.to(self.root_device)
