"""treadle-tensorboard through the plugin authors' conformance kit; the event files are read back."""

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from treadle.testing import ReporterConformance


class TestTensorboardReporter(ReporterConformance):
    entry_point = "tensorboard"
    name = "tensorboard"

    def read_back(self, output_dir: Path):
        written: dict = {}
        for events_file in Path(output_dir).rglob("events.out.tfevents.*"):
            events = EventAccumulator(str(events_file.parent), size_guidance={"scalars": 0})
            events.Reload()
            for tag in events.Tags()["scalars"]:
                for event in events.Scalars(tag):
                    written.setdefault(event.step, {})[tag] = event.value
        return written
