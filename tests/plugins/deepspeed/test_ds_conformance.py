"""treadle-deepspeed through the plugin authors' conformance kit, in one process (DeepSpeed's engine
over a gloo group of one). The two-process behaviour is what test_ds_training.py checks."""

from treadle.testing import StrategyConformance


class TestDeepSpeedStrategy(StrategyConformance):
    entry_point = "deepspeed"
    name = "deepspeed"
