"""treadle-hub through the plugin authors' conformance kit, pushing to this folder's Hub-compatible server."""

import pytest
from hub_kit import TOKEN

from treadle.testing import HubConformance


class TestHubSync(HubConformance):
    entry_point = "hub"
    name = "huggingface"

    @pytest.fixture(autouse=True)
    def _server(self, fake_hub, hub_env):
        self.fake_hub = fake_hub

    def arguments(self, tmp_path):
        self.repo_id = f"acme/conformance-{tmp_path.name}"[:90]
        return {"hub_model_id": self.repo_id, "hub_token": TOKEN, "save_steps": 2, "hub_retry_delay": 0.05}

    def pushed(self, tmp_path):
        return set(self.fake_hub.files(self.repo_id))
