"""The README and docs/*.md: the README stays short (at most 2,500 words), every relative link points at a
file that exists and every #anchor at a heading there, and no document speaks of how the project was made
(issue numbers, who lent what, the clock the work ran against) instead of what the code does.

Words are counted as `wc -w` counts them: runs of non-whitespace, the README's tables and code blocks
included (what a reader scrolls through). Anchors are GitHub's: a heading lowercased, its characters other
than letters, digits, spaces, hyphens and underscores dropped, spaces turned into hyphens, "-1", "-2", ...
appended to repeats; headings inside fenced code blocks do not count."""
import re
from pathlib import Path

import pytest

from conftest import ROOT

MAX_README_WORDS = 2500
# Words about how the project was made, each with the legitimate prose it must not hit: "drawn" alone
# (a sample is drawn), "session" alone (a class session, docs/teaching.md), "clocks" (a resumed run's
# clocks restart), "the task" (a training task), "deadline" (gpu_check.py's --deadline flag).
FORBIDDEN = [
    r"\bissues? #?\d+",                      # issue 16, issues 15 and 16, issue #28
    r"\b(PR|pull request) #?\d+",
    r"\bthe issue\b",                        # "where the issue left room"
    r"\(issue\b",                            # "GPU (issue: ...)"
    r"\b(lent|lend|lends|lending)\b",        # "no GPU was lent"
    r"\b(this|the|a) task (had|has|was|is not|that wrote)\b",
    r"\bdrawn (a|no) (GPU|device|machine)\b",
    r"\b(work|this|the|that|a|its) session\b(?! of (a|the) (class|course))",
    r"\bsession's\b",
    r"\bthe clock\b",
    r"\b(session|work|project|task)'?s? (clock|deadline|time budget)\b",
    r"\bthe lead\b",
    r"\bengineers?\b",
    r"\bwt-\d+\b",
    r"\bworktree\b",
]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def documents():
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def prose(text):
    """The lines outside fenced code blocks (a `# comment` in a bash block is not a heading)."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


def anchors(path):
    """GitHub's anchors of a markdown file's headings."""
    seen, out = {}, set()
    for line in prose(path.read_text()):
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(path):
    """'target (why)' for each relative link of `path` that points at no file or no heading."""
    bad = []
    for line in prose(path.read_text()):
        for m in LINK.finditer(line):
            target = m.group(1) or m.group(2)
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if not dest.exists():
                bad.append(f"{target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{target} (no such heading in {dest.name})")
    return bad


def making_of(text):
    """The forbidden phrases in `text`, with their line numbers."""
    return [f"{i}: {m.group(0)!r}" for i, line in enumerate(text.splitlines(), 1)
            for pat in FORBIDDEN for m in re.finditer(pat, line, re.IGNORECASE)]


def test_the_readme_is_read_in_ten_minutes():
    words = len((ROOT / "README.md").read_text().split())
    assert words <= MAX_README_WORDS, f"README.md has {words} words (at most {MAX_README_WORDS}): move detail to docs/"


def test_the_verdict_and_the_digest_come_first():
    lines = (ROOT / "README.md").read_text().splitlines()
    first = "\n".join(lines[:60])
    assert "<!-- digest:start -->" in first and "<!-- digest:end -->" in first
    assert "## What this implementation shows" in first


@pytest.mark.parametrize("path", documents(), ids=lambda p: p.name)
def test_links_resolve(path):
    assert broken_links(path) == []


@pytest.mark.parametrize("path", documents(), ids=lambda p: p.name)
def test_no_words_about_how_the_project_was_made(path):
    assert making_of(path.read_text()) == []


def test_the_checks_catch_what_they_should(tmp_path):
    """Each check fails on a planted violation and passes the legitimate prose next to it."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A real heading (`x.py`)\n\n## Twice\n\n## Twice\n")
    doc = tmp_path / "README.md"
    doc.write_text("[ok](docs/a.md#a-real-heading-xpy) [ok](docs/a.md#twice-1) [ok](https://example.org/x)\n"
                   "![ok](docs/a.md) [ok](#local)\n\n## Local\n\n```bash\n# Not a heading\n[x](nowhere.md)\n```\n"
                   "[bad](docs/b.md) [bad](docs/a.md#twice-2) [bad](#not-a-heading)\n")
    assert broken_links(doc) == ["docs/b.md (no such file)", "docs/a.md#twice-2 (no such heading in a.md)",
                                 "#not-a-heading (no such heading in README.md)"]
    planted = ["as issue 16 asked", "no GPU was lent to it", "where the issue left room", "GPU (issue: x)",
               "the work session could not fit it", "the session's end cut it", "against the clock",
               "this task had no GPU", "see PR #12"]
    assert all(making_of(p) for p in planted)
    fine = ["ties go to the prefix drawn first", "a short first session (no tensors)", "their clocks restart at the "
            "resume", "`--deadline 480`", "the issues users keep raising", "a task the paper's models never face",
            "each session of a class"]
    assert [making_of(f) for f in fine] == [[]] * len(fine)
