"""treadle-mlflow through the plugin authors' conformance kit, against this folder's real tracking server."""

import pytest
from mlflow import MlflowClient

from treadle.testing import ReporterConformance


class TestMlflowReporter(ReporterConformance):
    entry_point = "mlflow"
    name = "mlflow"

    @pytest.fixture(autouse=True)
    def _server(self, mlflow_server):
        self.server = mlflow_server

    def arguments(self, tmp_path):
        self.experiment = f"conformance-{tmp_path.name}"
        return {"mlflow_tracking_uri": self.server.uri, "mlflow_experiment": self.experiment}

    def read_back(self, output_dir):
        client = MlflowClient(self.server.uri)
        (run,) = client.search_runs([client.get_experiment_by_name(self.experiment).experiment_id])
        written: dict = {}
        for key in run.data.metrics:
            for metric in client.get_metric_history(run.info.run_id, key):
                written.setdefault(metric.step, {})[key] = metric.value
        return written
