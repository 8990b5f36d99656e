"""The README as a tested document: its Python tour runs, its links resolve, it stays a short guide.

* The ```python blocks of README.md run in order in one namespace (as a reader would paste them into one
  session), in a temporary working folder, and must leave the torch thread count as they found it.
* Every relative link of README.md and paper_figures/README.md points to a file or folder that exists,
  and every ``#anchor`` into a Markdown file names one of its headings (GitHub's slug rule).
* README.md has at most 300 lines; neither file talks about how the software was made.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "paper_figures" / "README.md"
MAX_README_LINES = 300

_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
# the target of an inline link or image: "](target)" or "](target "title")"; the link text may hold
# brackets of its own (a number with its interval), so only the closing "](" is matched
_LINK_TARGET = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)


def python_blocks(text: str) -> list[str]:
    """The bodies of the fenced blocks whose info string is ``python``, in document order."""
    return [m.group(2) for m in _FENCE.finditer(text) if m.group(1).strip().split(" ")[0] == "python"]


def _prose(text: str) -> str:
    """The text without fenced blocks and inline code spans (where brackets are not links)."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def link_targets(text: str) -> list[str]:
    return _LINK_TARGET.findall(_prose(text))


def github_slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup and punctuation dropped, lower case, spaces as hyphens.

    Letters, digits (any script), ``_``, ``-`` and spaces are kept; everything else (``:``, ``/``, ``,``,
    backticks, ``*``, ``(``, ...) is removed, so "The VP/DDIM baseline" becomes "the-vpddim-baseline".
    """
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.strip().lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in " _-")
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of every heading (outside code blocks), duplicates numbered as GitHub does."""
    seen: dict[str, int] = {}
    out = set()
    for m in _HEADING.finditer(_FENCE.sub("", text)):
        slug = github_slug(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


# ------------------------------------------------------------------------------------------------ tour


def test_readme_has_a_python_tour():
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 5, "the README's tour should show the library in several short python blocks"


def test_readme_python_blocks_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    namespace = {"__name__": "__readme__"}
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i, block in enumerate(blocks):
            code = compile(block, f"README.md python block {i + 1}", "exec")
            exec(code, namespace)
    moved = [str(w.message) for w in caught if "the old name is an alias" in str(w.message)]
    assert not moved, f"the README uses module names of the flat layout: {moved}"
    assert torch.get_num_threads() == threads, "the README's code must not change the torch thread count"
    assert list(tmp_path.iterdir()) == [], "the README's code should not write files"


# ------------------------------------------------------------------------------------------------ links


def _check_links(doc: Path) -> list[str]:
    bad = []
    for target in link_targets(doc.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (doc.parent / path_part).resolve() if path_part else doc
        if not dest.exists():
            bad.append(f"{target}: {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest} does not exist")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
            bad.append(f"{target}: no heading of {dest.name} has the anchor #{anchor}")
    return bad


@pytest.mark.parametrize("doc", [README, RESULTS], ids=["README.md", "paper_figures/README.md"])
def test_relative_links_resolve(doc):
    assert link_targets(doc.read_text(encoding="utf-8")), f"{doc.name} has no links to check"
    bad = _check_links(doc)
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_readme_links_into_the_results():
    """The README's answers point at the sections of paper_figures/README.md that hold the evidence."""
    into = [t for t in link_targets(README.read_text(encoding="utf-8")) if t.startswith("paper_figures/README.md#")]
    assert len(into) >= 5


def test_github_slug():
    assert github_slug("Theorem 8: endpoint-to-path stability") == "theorem-8-endpoint-to-path-stability"
    assert github_slug("The VP/DDIM baseline") == "the-vpddim-baseline"
    assert github_slug("2D toy benchmark") == "2d-toy-benchmark"
    assert github_slug("`kacnum.flows` and *guidance*") == "kacnumflows-and-guidance"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


# ------------------------------------------------------------------------------------------------ form


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; a guide keeps to {MAX_README_LINES}"


@pytest.mark.parametrize("doc", [README, RESULTS], ids=["README.md", "paper_figures/README.md"])
def test_no_words_about_how_it_was_made(doc):
    text = doc.read_text(encoding="utf-8")
    assert "SPEC" not in text, "cite the derivations as docs/mathematics.md §N"
    lower = text.lower()
    for phrase in ("session", "issue ", "gpu was lent", "no gpu"):
        assert phrase not in lower, f"{doc.name} mentions {phrase!r}: describe the software and its results only"
