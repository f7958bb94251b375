import csv

from treadle.testing import ReporterConformance


class TestAcmeCsvReporter(ReporterConformance):
    entry_point = "acme_csv"
    name = "acme_csv"

    def read_back(self, output_dir):
        written = {}
        with (output_dir / "metrics.csv").open(newline="") as handle:
            for row in csv.DictReader(handle):
                written.setdefault(int(row["step"]), {})[row["key"]] = float(row["value"])
        return written
