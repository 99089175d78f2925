"""The documentation holds together: every relative link in README.md and docs/*.md reaches a
file of the repository (and, for a link into a Markdown page, a heading of that page), nothing
in the repository points at documents outside it or at tracker numbers nobody outside can
resolve, and docs/configuration.md names every setting core/settings.py reads."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
CONFIGURATION = ROOT / "docs" / "configuration.md"

# `[text](target)` and `[text](target "title")`; images too. Code spans are removed first.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_BLOCK = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:

# What the repository must not mention (built from parts, so this file does not match itself):
# documents that live outside it, and tracker numbers.
FORBIDDEN = {
    "a document outside the repository": re.compile(
        "|".join(
            re.escape(part) for part in ("shared/" + "API.md", "STACK-" + "NOTES", "API" + ".md")
        )
    ),
    "an issue number": re.compile(r"\bissue" + r"s?\s*#?\d+", re.IGNORECASE),
}
SKIPPED_DIRS = frozenset(
    {
        ".git",
        ".venv",
        ".durapay",
        "__pycache__",
        "durapay.egg-info",
        ".pytest_cache",
        ".ruff_cache",
        "node_modules",
    }
)
MAX_SCANNED_BYTES = 2_000_000


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.lstrip("#").strip().lower()
    text = CODE_SPAN.sub(lambda span: span.group(0).strip("`"), text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors_of(page: Path) -> set[str]:
    text = CODE_BLOCK.sub("", page.read_text())
    seen: dict[str, int] = {}
    anchors: set[str] = set()
    for line in text.splitlines():
        if re.match(r"#{1,6} ", line):
            anchor = github_anchor(line)
            count = seen.get(anchor, 0)
            anchors.add(anchor if count == 0 else f"{anchor}-{count}")
            seen[anchor] = count + 1
    return anchors


def relative_links(page: Path) -> Iterator[str]:
    text = CODE_SPAN.sub("", CODE_BLOCK.sub("", page.read_text()))
    for match in LINK.finditer(text):
        target = match.group(1)
        if not EXTERNAL.match(target):
            yield target


def repository_text_files() -> Iterator[Path]:
    stack = [ROOT]
    while stack:
        directory = stack.pop()
        for path in sorted(directory.iterdir()):
            if path.is_dir():
                if path.name not in SKIPPED_DIRS and not path.is_symlink():
                    stack.append(path)
            elif path.is_file() and path.stat().st_size <= MAX_SCANNED_BYTES:
                yield path


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken: list[str] = []
    for target in relative_links(page):
        path_part, _, anchor = target.partition("#")
        destination = (page.parent / path_part).resolve() if path_part else page
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif not destination.is_relative_to(ROOT):
            broken.append(f"{target}: outside the repository")
        elif anchor and destination.suffix == ".md" and anchor not in anchors_of(destination):
            broken.append(f"{target}: no heading #{anchor} in {destination.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_no_file_mentions_outside_documents_or_issue_numbers() -> None:
    this_file = Path(__file__).resolve()
    found: list[str] = []
    for path in repository_text_files():
        if path.resolve() == this_file:
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue  # binary files
        for what, pattern in FORBIDDEN.items():
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{path.relative_to(ROOT)}:{line}: {what} ({match.group(0)!r})")
    assert not found, "\n".join(found)


def setting_names() -> list[str]:
    names: list[str] = []
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        choices = getattr(alias, "choices", None)
        names.append(str(choices[0]) if choices else f"DURAPAY_{name.upper()}")
    return names


def test_configuration_page_documents_every_setting() -> None:
    text = CONFIGURATION.read_text()
    missing = [name for name in setting_names() if f"`{name}`" not in text]
    assert not missing, f"docs/configuration.md does not document: {', '.join(missing)}"


def test_link_checker_finds_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n")
    page.write_text(
        "[ok](other.md#a-section) [gone](missing.md) [bad](other.md#nowhere) "
        "`[in code](ignored.md)` [web](https://example.com)\n"
    )
    targets = list(relative_links(page))
    assert targets == ["other.md#a-section", "missing.md", "other.md#nowhere"]
    assert anchors_of(tmp_path / "other.md") == {"other-page", "a-section"}
