"""treadle-optuna's entry point: registration only (optuna is imported when a search starts)."""

from treadle import hookimpl


@hookimpl
def treadle_register_search_backends(register):
    register("optuna", "treadle_optuna.backend:OptunaBackend", requires=("optuna",),
             description="optuna studies: TPE and other samplers, pruning, sqlite/RDB storage that survives a crash")


@hookimpl
def treadle_report_env():
    from importlib.metadata import PackageNotFoundError, version

    try:
        return [("optuna", version("optuna"))]
    except PackageNotFoundError:
        return [("optuna", "not installed")]
