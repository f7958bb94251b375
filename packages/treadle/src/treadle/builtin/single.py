"""The ``single`` strategy: one process training on one device.

No process group, no wrapper, no collective: the ``Strategy`` defaults are the identity, so
this strategy only places the model on the backend's device.
"""

from __future__ import annotations

import os

import torch

from treadle.components import Strategy
from treadle.errors import UsageError
from treadle.install_hints import install_command


class SingleDeviceStrategy(Strategy):
    """One process, the model on ``backend.setup_device(0)``."""

    name = "single"

    def setup_environment(self) -> None:
        """Refuse to run as one of several launched processes: each would train alone on all the data."""
        world = os.environ.get("WORLD_SIZE", "1")
        if world.isdigit() and int(world) > 1:
            raise UsageError(
                f"strategy 'single' trains in one process, but a launcher started {world} (WORLD_SIZE={world}): "
                "each would train on its own, unaware of the others. Use a multi-process strategy "
                f"(--strategy ddp, from {install_command('treadle-ddp')}; or fsdp / deepspeed), or start one process"
            )
        super().setup_environment()

    def setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move the model to the device (the loop has applied the precision's ``convert_module``)."""
        if self.root_device is None:
            self.setup_environment()
        return model.to(self.root_device)
