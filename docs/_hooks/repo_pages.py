"""mkdocs hook: the site also shows the READMEs that live next to the code, with working links.

The plugins' READMEs (one page per first-party plugin), plugins/README.md and
benchmarks/README.md are written where a reader of the repository finds them, and docs/ links to
them with ``../`` paths. This hook adds them to the site under ``first-party/`` and
``repository/`` and rewrites every relative link (in docs/ and in those pages) that points into
the repository outside docs/: to the page that shows the file when there is one, otherwise to
the repository path as code (a source file is not a page). ``mkdocs build --strict`` then checks
every remaining link.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
_LINK = re.compile(r"(?<!!)\[([^\]\n]*)\]\(([^)\s]+)\)")


def _repo_pages() -> dict[str, str]:
    """Repository path (posix, relative) -> site source path, for the files shown outside docs/."""
    pages = {"plugins/README.md": "repository/plugin-layout.md", "benchmarks/README.md": "repository/benchmarks.md"}
    for readme in sorted(REPO.glob("plugins/treadle-*/README.md")):
        pages[readme.relative_to(REPO).as_posix()] = f"first-party/{readme.parent.name}.md"
    return pages


PAGES = _repo_pages()
_ORIGIN = {site: repo for repo, site in PAGES.items()}


def on_files(files, config):
    for repo_path, site_path in PAGES.items():
        source = REPO / repo_path
        generated = File.generated(config, site_path, content=source.read_text(encoding="utf-8"))
        files.append(generated)
    return files


def _where(page_src: str) -> str:
    """The repository path of the file a page comes from."""
    return _ORIGIN.get(page_src, f"docs/{page_src}")


def on_page_markdown(markdown, page, config, files):
    origin = _where(page.file.src_uri)

    def rewrite(match: re.Match) -> str:
        text, target = match.group(1), match.group(2)
        if re.match(r"^[a-z]+:|^#|^/", target):
            return match.group(0)
        path, _, anchor = target.partition("#")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(origin), path))
        if resolved.startswith("docs/"):
            if origin.startswith("docs/"):
                return match.group(0)  # mkdocs checks it as it is
            site = resolved[len("docs/"):]
        else:
            candidate = resolved if resolved.endswith(".md") else posixpath.join(resolved, "README.md")
            site = PAGES.get(candidate)
            if site is None:
                shown = text if text.startswith("`") else f"{text} (`{resolved}`)"
                return shown
        relative = posixpath.relpath(site, posixpath.dirname(page.file.src_uri) or ".")
        return f"[{text}]({relative}{'#' + anchor if anchor else ''})"

    return _LINK.sub(rewrite, markdown)
