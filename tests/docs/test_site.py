"""The documentation site, built by mkdocs and opened in headless Chromium.

``tox -e docs`` builds the site with ``mkdocs build --strict`` (a broken link or a page missing
from the navigation fails the build) and points ``TREADLE_DOCS_SITE`` at it; without that
variable the test builds the site itself when mkdocs is installed. The pages are served on
127.0.0.1 and rendered by Chromium (``--dump-dom``: the DOM after the theme's JavaScript ran),
so what is checked is what a reader's browser shows: the quickstart's commands, the argument
reference's tables, and that every link in those pages reaches a page and an anchor that exist.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlparse

import pytest

REPO = Path(__file__).resolve().parents[2]
IN_DOCS_ENV = os.environ.get("TREADLE_TEST_ENV") == "docs"


class Page(HTMLParser):
    """What the checks need from a rendered page: ids, links in the article, text, headings."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.h1: list[str] = []
        self.text: list[str] = []
        self.copy_buttons = 0
        self.table_rows = 0
        self._article = 0
        self._in_h1 = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "article":
            self._article += 1
        if tag == "h1":
            self._in_h1 = True
            self.h1.append("")
        if tag == "a" and self._article and attrs.get("href"):
            self.links.append(attrs["href"])
        classes = (attrs.get("class") or "").split()
        if tag == "button" and {"md-clipboard", "md-code__button"} & set(classes):  # added by the theme's script
            self.copy_buttons += 1
        if tag == "tr" and self._article:
            self.table_rows += 1

    def handle_endtag(self, tag):
        if tag == "article":
            self._article -= 1
        if tag == "h1":
            self._in_h1 = False

    def handle_data(self, data):
        if self._in_h1:
            self.h1[-1] += data
        if self._article:
            self.text.append(data)

    @property
    def body(self) -> str:
        return " ".join(" ".join(self.text).split())


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    built = os.environ.get("TREADLE_DOCS_SITE")
    if built:
        return Path(built)
    try:
        import mkdocs  # noqa: F401
    except ImportError:
        if IN_DOCS_ENV:
            raise
        pytest.skip("mkdocs is not installed (tox -e docs builds and tests the site)")
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def server(site):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """``render(url) -> Page``: the DOM Chromium built for ``url``, cached per page."""
    binary = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if binary is None:
        if IN_DOCS_ENV:
            pytest.fail("no Chromium: .ci/run installs Debian's chromium for the docs environment")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    cache: dict[str, Page] = {}

    def render(url: str) -> Page:
        if url not in cache:
            done = subprocess.run(
                [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", url],
                capture_output=True, text=True, timeout=120,
            )
            assert done.returncode == 0 and "<html" in done.stdout, done.stderr[-2000:]
            cache[url] = Page(done.stdout)
        return cache[url]

    return render


def _check_links(page: Page, url: str, server: str, render) -> int:
    """Every link of the article: an external one is left alone, a site one must render and have its anchor."""
    checked = 0
    for href in page.links:
        target = urljoin(url, href)
        if not target.startswith(server):
            assert urlparse(target).scheme in {"http", "https", "mailto"}, href
            continue
        location, fragment = urldefrag(target)
        linked = page if location == urldefrag(url)[0] else render(location)
        assert linked.h1, f"{href} (from {url}) rendered no page"
        if fragment:
            assert fragment in linked.ids, f"{href} (from {url}): no #{fragment} on {location}"
        checked += 1
    return checked


def test_quickstart_renders_with_working_links(server, browser):
    url = server + "quickstart/"
    page = browser(url)
    assert page.h1[0].strip().startswith("Quickstart")
    assert ".venv/bin/treadle train" in page.body and ".tox-venv/bin/tox" in page.body
    assert page.copy_buttons >= 2, "the theme's script did not run (no copy buttons on the code blocks)"
    assert _check_links(page, url, server, browser) >= 2


def test_argument_reference_renders_with_working_links(server, browser):
    url = server + "reference/arguments/"
    page = browser(url)
    assert page.h1[0].strip().startswith("Argument reference")
    assert page.table_rows > 100, f"only {page.table_rows} table rows"
    assert "per_device_train_batch_size" in page.body and "learning_rate" in page.body
    _check_links(page, url, server, browser)
    home = browser(server)
    assert _check_links(home, server, server, browser) >= 5  # the home page's links into the site


def test_every_first_party_plugin_has_a_page(server, browser, site):
    readmes = sorted(p.parent.name for p in (REPO / "plugins").glob("treadle-*/README.md"))
    assert readmes
    for name in readmes:
        assert (site / "first-party" / name / "index.html").is_file(), f"no page for {name}"
    page = browser(server + "first-party/treadle-amp/")
    assert "treadle-amp" in page.h1[0]
