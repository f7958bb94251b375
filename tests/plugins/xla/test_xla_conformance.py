"""treadle-xla through the plugin authors' conformance kit, on PJRT's CPU device (tox -e xla sets PJRT_DEVICE=CPU)."""

from treadle.testing import BackendConformance


class TestXlaBackend(BackendConformance):
    entry_point = "xla"
    name = "xla"
