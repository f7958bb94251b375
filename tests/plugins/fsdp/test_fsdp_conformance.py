"""treadle-fsdp through the plugin authors' conformance kit, in one process (a mesh of one).
Sharding over several ranks is what test_training.py and test_checkpoint.py check."""

from treadle.testing import StrategyConformance


class TestFsdpStrategy(StrategyConformance):
    entry_point = "fsdp"
    name = "fsdp"
