"""The documentation holds together: a short README, and every relative link, image and anchor resolves.

Pure standard library and fast: reads README.md, ARCHITECTURE.md, BENCHMARKS.md and docs/**/*.md.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250

INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HTML_TARGET = re.compile(r"<(?:img|a|source)\b[^>]*?\b(?:src|href)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
EXTERNAL = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|//)")  # http:, https:, mailto:, ...


def markdown_files() -> list[Path]:
    files = [ROOT / name for name in ("README.md", "ARCHITECTURE.md", "BENCHMARKS.md")]
    files += sorted((ROOT / "docs").rglob("*.md"))
    return [path for path in files if path.is_file()]


def prose_lines(text: str):
    """(line number, line) outside fenced and indented code blocks."""
    fence = None
    previous_blank = True
    in_indented_code = False
    for number, line in enumerate(text.splitlines(), start=1):
        match = FENCE.match(line)
        if fence is not None:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
                fence = None
            previous_blank = False
            continue
        if match:
            fence = match.group(1)
            continue
        blank = not line.strip()
        indented = line.startswith(("    ", "\t"))
        if indented and (previous_blank or in_indented_code):
            in_indented_code = True
            previous_blank = False
            continue
        if not blank:
            in_indented_code = False
        previous_blank = blank
        yield number, line


def links(path: Path):
    return links_in_text(path.read_text(encoding="utf-8"))


def links_in_text(text: str):
    """(line number, target) of every markdown link, image, reference definition and HTML src / href."""
    for number, line in prose_lines(text):
        line = CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line)  # `[x](y)` in code is not a link
        targets = [m.group(1) for m in INLINE_LINK.finditer(line)]
        targets += [m.group(1) for m in HTML_TARGET.finditer(line)]
        match = REFERENCE_DEF.match(line)
        if match:
            targets.append(match.group(1))
        for target in targets:
            target = target.strip()
            if target.startswith("<") and target.endswith(">"):
                target = target[1:-1]
            yield number, target


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lowercase, punctuation except '-' and '_' removed,
    spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset:
    """Every anchor of a markdown file: heading slugs (repeats get -1, -2, ...) and explicit HTML ids / names."""
    seen: dict[str, int] = {}
    found = set()
    text = path.read_text(encoding="utf-8")
    for _, line in prose_lines(text):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    found.update(m.group(1) for m in re.finditer(r"<[^>]+\b(?:id|name)\s*=\s*[\"']([^\"']+)[\"']", text))
    return frozenset(found)


def resolved_targets():
    """(source file, line, target, resolved path or None for a same-file anchor, anchor or None)."""
    for path in markdown_files():
        for number, target in links(path):
            if not target or EXTERNAL.match(target):
                continue
            location, _, anchor = target.partition("#")
            location = unquote(location.split("?", 1)[0])
            if not location:
                resolved = path
            elif location.startswith("/"):
                resolved = ROOT / location.lstrip("/")
            else:
                resolved = path.parent / location
            yield path, number, target, resolved, unquote(anchor) if anchor else None


def where(path: Path, number: int) -> str:
    return f"{path.relative_to(ROOT)}:{number}"


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines, at most {README_MAX_LINES}: move detail to a page in docs/"
    )


def test_relative_links_resolve():
    broken = []
    for path, number, target, resolved, _ in resolved_targets():
        absolute = Path(*resolved.parts).resolve()
        if ROOT != absolute and ROOT not in absolute.parents:
            broken.append(f"{where(path, number)}: {target} (outside the repository)")
        elif not absolute.exists():
            broken.append(f"{where(path, number)}: {target} (no such file or folder)")
    assert not broken, "broken relative links:\n" + "\n".join(broken)


def test_anchors_name_headings():
    broken = []
    for path, number, target, resolved, anchor in resolved_targets():
        if anchor is None or resolved.suffix.lower() != ".md" or not resolved.is_file():
            continue  # a missing file is reported by test_relative_links_resolve
        if anchor.lower() not in anchors(resolved.resolve()):
            broken.append(
                f"{where(path, number)}: {target} (no heading '#{anchor}' in {resolved.resolve().relative_to(ROOT)})"
            )
    assert not broken, "links to missing headings:\n" + "\n".join(broken)


@pytest.mark.parametrize(
    "heading, expected",
    [
        ("2. Loss", "2-loss"),
        (
            "The controlled ablation: does the metric loss make MEnet robust?",
            "the-controlled-ablation-does-the-metric-loss-make-menet-robust",
        ),
        ("`python -m menet_datasets.prepare`", "python--m-menet_datasetsprepare"),
        (
            "Corruptions (ImageNet-C) and adversarial attacks (PGD)",
            "corruptions-imagenet-c-and-adversarial-attacks-pgd",
        ),
    ],
)
def test_slug_follows_github(heading, expected):
    assert slug(heading) == expected


def test_link_parser_skips_code():
    text = (
        "See [a](x.md) and `[b](not-a-link.md)`.\n\n    [c](indented-code.md)\n\n```\n[d](fenced.md)\n```\n"
        '<img src="pic.png" alt="">\n![e](img.png "title") [f](<with space.md>)\n\n[ref]: y.md\n'
    )
    assert [target for _, target in links_in_text(text)] == ["x.md", "pic.png", "img.png", "with space.md", "y.md"]
