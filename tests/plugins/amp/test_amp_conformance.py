"""treadle-amp through the plugin authors' conformance kit: its two mixed precisions (on the CPU)."""

from treadle.testing import PrecisionConformance


class TestBf16(PrecisionConformance):
    entry_point = "amp"
    name = "bf16"


class TestFp16(PrecisionConformance):
    entry_point = "amp"
    name = "fp16"

    def check_training(self, trainer, args, tmp_path):
        super().check_training(trainer, args, tmp_path)
        assert "scale" in str(trainer.precision.state_dict())  # the loss scaler is what a resume must restore
