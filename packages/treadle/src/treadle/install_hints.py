"""How to install a first-party plugin that is missing: the advice every "not installed" message gives.

The first-party plugins (``plugins/treadle-<x>`` in the treadle repository) are not on PyPI yet,
so ``pip install treadle-amp`` would fail. Until a distribution is published (listed in
``PUBLISHED``), the advice is to install it from the repository: ``pip install ./plugins/treadle-amp``
when this treadle runs from a source checkout (the path is shown relative to the current directory
when that is inside the checkout), else the folder to install from. Nothing here names a plugin;
the catalog (``treadle.catalog``) says which distribution provides what.

Standard library only: ``treadle plugins`` and argument errors use it without importing torch.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path
from typing import Optional

__all__ = ["PUBLISHED", "install_command", "not_installed_first_party", "source_checkout"]

PUBLISHED: frozenset[str] = frozenset()
"""First-party distributions that ``pip install <name>`` finds on PyPI (none yet)."""


def source_checkout() -> Optional[Path]:
    """The treadle repository this core runs from (an editable install), or None for an installed wheel."""
    root = Path(__file__).resolve().parents[4]  # <repo>/packages/treadle/src/treadle/install_hints.py
    if (root / "plugins").is_dir() and (root / "packages" / "treadle" / "pyproject.toml").is_file():
        return root
    return None


def plugin_folder(distribution: str) -> Optional[Path]:
    """``plugins/<distribution>`` of the source checkout, when there is one and it holds that plugin."""
    root = source_checkout()
    if root is None:
        return None
    folder = root / "plugins" / distribution
    return folder if (folder / "pyproject.toml").is_file() else None


def _shown(folder: Path) -> str:
    """``./plugins/treadle-amp`` from inside the checkout, the absolute path from anywhere else."""
    try:
        relative = os.path.relpath(folder, Path.cwd())
    except ValueError:  # another drive (Windows)
        return str(folder)
    return str(folder) if relative.startswith("..") else f"./{relative}"


def install_command(distribution: str) -> str:
    """What to run to get ``distribution``: ``pip install <name>`` once published, its folder until then."""
    if distribution in PUBLISHED:
        return f"pip install {distribution}"
    folder = plugin_folder(distribution)
    if folder is not None:
        return f"pip install {_shown(folder)}"
    return (
        f"pip install <treadle checkout>/plugins/{distribution} ({distribution} is not on PyPI yet; it is in the "
        "plugins/ folder of the treadle repository)"
    )


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def not_installed_first_party() -> list[tuple[str, str]]:
    """``(distribution, install command)`` for each plugin of the source checkout that is not installed."""
    root = source_checkout()
    if root is None:
        return []
    folders = sorted(p for p in (root / "plugins").iterdir() if (p / "pyproject.toml").is_file())
    return [(folder.name, install_command(folder.name)) for folder in folders if not _installed(folder.name)]
