"""treadle-tensorboard's registration: the reporter named by string, so ``treadle --help`` stays light.

The implementation (``treadle_tensorboard.reporter``) imports torch's TensorBoard writer; it is
loaded only when ``--report_to`` names ``tensorboard`` (or ``all``).
"""

from __future__ import annotations

from treadle import hookimpl


@hookimpl
def treadle_register_reporters(register):
    register(
        "tensorboard",
        "treadle_tensorboard.reporter:TensorBoardReporter",
        requires=("tensorboard",),
        description="TensorBoard event files under --logging_dir (default output_dir/runs/<date>_<host>)",
    )
