import pytest


@pytest.fixture(scope="session")
def extensions(request, tmp_path_factory):
    """Where DeepSpeed's one-off JIT build is cached when TORCH_EXTENSIONS_DIR is not set (tox sets it)."""
    cache = getattr(request.config, "cache", None)
    return cache.mkdir("torch_extensions") if cache is not None else tmp_path_factory.mktemp("torch_extensions")
