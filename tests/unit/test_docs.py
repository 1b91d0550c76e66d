"""The repository explains itself: citations of docs/ name pages and sections that exist.

Code, tests, bench, packaging and README cite the design as "docs/<page>.md" or
"docs/<page>.md, <Section>" (the start of a heading of that page). A renamed
section or page fails here, naming the file that cites it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
CITATION = re.compile(r'docs/([a-z_]+)\.md(?:, "?([A-Za-z`_.][^);:"\n]*?)"?(?=[);:"\n]|\.\s|\.$|, |$))?')
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".toml", ".txt", ".service", ".1", ""}


def _tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.split()
    return [REPO / name for name in out if (REPO / name).is_file() and (REPO / name).suffix in TEXT_SUFFIXES]


def _headings(page: Path) -> list[str]:
    return [line.lstrip("#").strip().replace("`", "").lower()
            for line in page.read_text().splitlines() if line.startswith("#")]


def test_every_citation_names_an_existing_page_and_section():
    wrong = []
    count = 0
    for path in _tracked_files():
        text = path.read_text(errors="replace")
        for match in CITATION.finditer(text):
            count += 1
            page, section = DOCS / f"{match.group(1)}.md", match.group(2)
            where = f"{path.relative_to(REPO)}: {match.group(0)!r}"
            if not page.is_file():
                wrong.append(f"{where}: no page {page.relative_to(REPO)}")
            elif section and not any(h.startswith(section.strip().replace("`", "").lower())
                                     for h in _headings(page)):
                wrong.append(f"{where}: no section {section!r} in {page.relative_to(REPO)}")
    assert count > 30, "the citations were not found at all: is the pattern still right?"
    assert wrong == [], "\n".join(wrong)


def test_docs_index_lists_every_page():
    index = (DOCS / "README.md").read_text()
    pages = sorted(p.name for p in DOCS.glob("*.md") if p.name != "README.md")
    assert pages and [p for p in pages if f"({p})" not in index] == []


def test_nothing_cites_documents_outside_the_repository():
    """The design lives in docs/: no citation of a specification the repository does not hold."""
    outside = ["CONTRACT" + " §", "CONTRACT" + ".md", "STYLE" + ".md"]
    found = [f"{path.relative_to(REPO)}: {word}" for path in _tracked_files()
             for word in outside if word in path.read_text(errors="replace")]
    assert found == []
