"""The documentation: the README as a front door, and the mkdocs site in docs/ that holds the rest.

`mkdocs build --strict` runs here as it would for a reader (a real build of every page into a temp folder,
mkdocstrings importing nothing but reading the code, mkdocs-click rendering the `rag` and `raft` groups), so a
broken link, a page missing from the nav, an anchor that does not exist or an API page that does not render
fails the suite. The README is not part of the site, so its links are checked here by hand.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

README = ROOT / "README.md"
QUICKSTART = (
    "bash scripts/run.sh      # install, build/update the index of corpus/, open the chat at http://127.0.0.1:8501",
    "bash scripts/test.sh     # install with test extras, run the whole test suite",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> tuple[Path, str]:
    """The site built from this checkout with --strict into a temp folder, and what mkdocs printed."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--clean", "-d", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log
    return out, log


def _text(html_file: Path) -> str:
    """The words of a built page's article, tags stripped."""
    html = html_file.read_text(encoding="utf-8")
    article = html[html.find("<article"):html.find("</article>")]
    return " ".join(re.sub(r"<[^>]+>", " ", article).split())


def test_the_site_builds_strict_with_no_warning(site):
    _, log = site
    assert "WARNING" not in log and "ERROR" not in log, log


def test_every_nav_page_exists_and_was_built(site):
    out, _ = site
    nav = re.findall(r":\s*([\w/.-]+\.md)\s*$|^\s*-\s+([\w/.-]+\.md)\s*$",
                     (ROOT / "mkdocs.yml").read_text(encoding="utf-8"), re.M)
    pages = [a or b for a, b in nav]
    assert len(pages) > 20
    for page in pages:
        assert (ROOT / "docs" / page).is_file(), page
        built = out / (page[:-3] + ".html" if page.endswith("index.md") else page[:-3] + "/index.html")
        assert built.is_file(), built


def test_api_cli_and_settings_pages_render_from_the_code(site):
    out, _ = site
    api = _text(out / "reference" / "api" / "rag-api" / "index.html")
    assert "index_corpus" in api and "make_pipeline" in api  # mkdocstrings rendered rag.api's functions
    cli = _text(out / "reference" / "cli" / "index.html")
    for command in ("rag index", "rag search", "rag ask", "rag serve", "raft generate", "raft train", "raft course"):
        assert command in cli, command  # mkdocs-click rendered both groups
    assert "Sentinel" not in cli  # click's unset defaults never leak into the page
    from rag.config import Settings

    settings = _text(out / "reference" / "settings" / "index.html")
    for name in Settings.model_fields:  # the table is generated from the code: every setting, with its variable
        assert f"RAG_{name.upper()}" in settings, name
    assert "<!-- settings-table -->" not in (out / "reference" / "settings" / "index.html").read_text("utf-8")


def test_readme_is_a_front_door():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) < 200
    for line in QUICKSTART:  # the Quickstart commands, exactly as a fresh clone checks them
        assert line in text, line
    assert "docs/screenshot.png" in text and (ROOT / "docs" / "screenshot.png").is_file()
    assert "mkdocs serve" in text
    headline = [row for row in text.splitlines() if row.startswith("| ") and "docs/results/" in row]
    assert len(headline) >= 5
    raft = [row for row in headline if "RAFT on an independent course's own quiz" in row]
    assert raft and "docs/results/raft.md#raft-on-an-independent-courses-human-quiz" in raft[0]


def test_readme_links_are_relative_and_resolve():
    text = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        assert not re.match(r"[a-z]+://|/", link), f"README link {link} should be relative to the repository"
        path, _, anchor = link.partition("#")
        target = ROOT / path
        assert target.exists(), f"README links to {link}, which does not exist"
        if anchor and target.suffix == ".md":
            headings = re.findall(r"^#+\s+(.*)$", target.read_text(encoding="utf-8"), re.M)
            slugs = {re.sub(r"[^\w\s-]", "", h.lower()).strip().replace(" ", "-") for h in headings}
            assert anchor in slugs, f"README links to {link}: no such heading"


def test_the_site_loads_nothing_from_another_host(site):
    """Built offline and read offline: no web font, script, style sheet or image fetched from elsewhere (a
    course example such as `![x](http://host/p.png)` must stay code, never become a live image)."""
    out, _ = site
    pages = list(out.rglob("*.html"))
    assert pages
    for page in pages:
        html = page.read_text(encoding="utf-8")
        remote = re.findall(r"<(?:img|script|iframe|link)\b[^>]*?\b(?:src|href)=\"((?:https?:)?//[^\"]+)\"", html)
        assert not remote, (page.relative_to(out), remote)
