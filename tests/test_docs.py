"""Every "spec §N" the code, configs, tests and README cite is a heading of docs/method.md."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHOD = REPO / "docs" / "method.md"
CITATION = re.compile(r"spec §\s*(\d+(?:\.\d+)*)")
SOURCES = ("src", "tests", "bench")


def headings(text: str) -> set[str]:
    """Section numbers of Markdown headings like ``## 5. Title`` or ``### 2.1 Title``."""
    return {m.group(1) for m in re.finditer(r"^#{2,4}\s+(\d+(?:\.\d+)*)\.?\s", text, flags=re.MULTILINE)}


def cited_sections() -> dict[str, list[str]]:
    cited: dict[str, list[str]] = {}
    files = [p for folder in SOURCES for p in (REPO / folder).rglob("*") if p.suffix in (".py", ".yaml")]
    files.append(REPO / "README.md")
    for path in files:
        for number in CITATION.findall(path.read_text(encoding="utf-8")):
            cited.setdefault(number.rstrip("."), []).append(str(path.relative_to(REPO)))
    return cited


def test_headings_reader() -> None:
    text = "# Title\n## 1. Network\n### 2.1 Shared parts\n#### 10.6 Walk\nnot ## 3. a heading\n"
    assert headings(text) == {"1", "2.1", "10.6"}
    assert CITATION.findall("see spec §2.3 and spec §7.") == ["2.3", "7"]


def test_every_cited_section_exists() -> None:
    assert METHOD.is_file(), "docs/method.md is the method reference the code cites"
    have = headings(METHOD.read_text(encoding="utf-8"))
    cited = cited_sections()
    assert len(cited) >= 8, sorted(cited)  # the code does cite the method
    missing = {n: sorted(set(files))[:3] for n, files in cited.items() if n not in have}
    assert not missing, f"cited but not a heading of docs/method.md: {missing}"
