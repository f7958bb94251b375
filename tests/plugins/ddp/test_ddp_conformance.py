"""treadle-ddp through the plugin authors' conformance kit, in one process (a world of one over gloo).
The two-process behaviour is what test_ddp.py checks; this is the contract every strategy meets."""

from treadle.testing import StrategyConformance


class TestDdpStrategy(StrategyConformance):
    entry_point = "ddp"
    name = "ddp"
