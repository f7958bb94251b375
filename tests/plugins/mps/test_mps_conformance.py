"""treadle-mps through the plugin authors' conformance kit. Without the device here, the training
checks skip with the backend's own unavailable_reason(); the light entry point, the names, the
contract and the availability answers are checked everywhere."""

from treadle.testing import BackendConformance


class TestMpsBackend(BackendConformance):
    entry_point = "mps"
    name = "mps"
