"""The docs hold together: every relative link in README.md and docs/*.md points to an existing
file, and the architecture figure is well-formed, self-contained SVG."""

from __future__ import annotations

import re
import xml.dom.minidom
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_INLINE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^)]*[\"'])?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.M)
_EXTERNAL = ("http://", "https://", "mailto:", "ftp://", "data:")


def relative_links(text: str) -> list[str]:
    """Link targets outside code (fenced blocks and code spans), without external URLs and anchors."""
    text = _CODE_SPAN.sub("", _FENCE.sub("", text))
    targets = _INLINE.findall(text) + _REFERENCE.findall(text)
    out = []
    for t in targets:
        if t.startswith(_EXTERNAL) or t.startswith("#"):
            continue
        path = t.split("#", 1)[0].split("?", 1)[0]
        if path:
            out.append(path)
    return out


def test_link_parser():
    text = ("[a](docs/a.md) ![img](img/x.svg \"title\") [web](https://example.com) [anchor](#top)\n"
            "[b](b.md#part) `[not](code.md)`\n```markdown\n[not](block.md)\n```\n[ref]: ../c.md\n")
    assert relative_links(text) == ["docs/a.md", "img/x.svg", "b.md", "../c.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(page: Path):
    missing = [t for t in relative_links(page.read_text(encoding="utf-8")) if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


def test_architecture_svg_is_well_formed_and_self_contained():
    path = ROOT / "docs" / "img" / "architecture.svg"
    doc = xml.dom.minidom.parse(str(path))
    svg = doc.documentElement
    assert svg.tagName == "svg" and svg.getAttribute("viewBox")
    assert not doc.getElementsByTagName("script"), "no scripts in the figure"
    text = path.read_text(encoding="utf-8")
    assert "@import" not in text and "@font-face" not in text and "url(http" not in text, "no external fonts or styles"
    for el in doc.getElementsByTagName("*"):
        for attr in ("href", "xlink:href"):
            ref = el.getAttribute(attr)
            assert not ref or ref.startswith("#"), f"external reference {ref!r}"
