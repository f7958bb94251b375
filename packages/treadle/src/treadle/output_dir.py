"""Make sure ``output_dir`` can hold the run's files before the run spends time training.

A path under a file, a file in the way, or a directory without write permission would
otherwise show up only at the first save or log, as a traceback after minutes of training.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union

from treadle.errors import UsageError


def prepare_output_dir(path: Union[str, os.PathLike]) -> Path:
    """Create ``path`` if needed and check that files can be written in it; ``UsageError`` if not."""
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"--output_dir {directory}: a file is in the way; remove it or choose another --output_dir") from None
    except NotADirectoryError:
        raise UsageError(
            f"--output_dir {directory}: part of that path is a file, not a directory; choose another --output_dir"
        ) from None
    except OSError as exc:
        raise UsageError(
            f"--output_dir {directory}: cannot be created ({exc.strerror or exc}); choose another --output_dir"
        ) from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".treadle-write-test-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(
            f"--output_dir {directory}: cannot write files there ({exc.strerror or exc}); "
            "fix its permissions or choose another --output_dir"
        ) from None
    return directory
