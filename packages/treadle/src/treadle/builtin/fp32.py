"""The ``fp32`` precision: plain float32 everywhere, the reference every other precision is compared to.

No autocast, no loss scaling, no module conversion: every ``Precision`` default already does the
right thing, so this class only names the behaviour.
"""

from __future__ import annotations

from treadle.components import Precision


class Fp32Precision(Precision):
    """Full float32 training and evaluation."""

    name = "fp32"
