"""Registrations of acme-treadle-csv; imports nothing but treadle's hook marker."""

from treadle import hookimpl


@hookimpl
def treadle_register_reporters(register):
    register("acme_csv", "acme_treadle_csv.reporter:AcmeCsvReporter", description="metrics as CSV rows in output_dir")


@hookimpl
def treadle_add_arguments(schema):
    schema.add("acme_csv_filename", type=str, default="metrics.csv",
               help="the CSV file (in output_dir) that --report_to acme_csv writes")
