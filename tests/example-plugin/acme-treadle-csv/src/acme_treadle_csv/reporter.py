"""The acme_csv reporter: one CSV row (step, key, value) per logged number."""

from __future__ import annotations

import csv
from pathlib import Path

from treadle.components import Reporter


class AcmeCsvReporter(Reporter):
    name = "acme_csv"

    def setup(self, args, state, model):
        self.path = Path(args.output_dir) / args.acme_csv_filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = self.path.open("a", encoding="utf-8", newline="")
        self._rows = csv.writer(self._file)
        if new:
            self._rows.writerow(["step", "key", "value"])

    def log(self, logs, step):
        for key, value in logs.items():
            if isinstance(value, (int, float)):
                self._rows.writerow([step, key, value])
        self._file.flush()

    def finish(self):
        if getattr(self, "_file", None) is not None:
            self._file.close()
            self._file = None
