"""The figures the docs quote about the shipped toy world (its corpus shares, its size, its gates) are the
ones of assets/toy/build.json and assets/toy/gates.json: README.md and every docs/*.md are scanned for the
phrasings below (line breaks and markdown emphasis ignored), and each figure found must equal the shipped
one, rounded as it is written. A figure the docs no longer quote is not an error; a wrong one is."""
import json
import re

import pytest

from conftest import ROOT

BUILD = json.loads((ROOT / "assets" / "toy" / "build.json").read_text())
GATES = json.loads((ROOT / "assets" / "toy" / "gates.json").read_text())
TASKS = BUILD["tasks"]


def pct(x):
    return 100 * x


# (a phrasing with one number in it, the shipped value in the units the phrasing uses)
CLAIMS = [
    (r"(\d+(?:\.\d+)?)% carry an instruction", pct(sum(TASKS.values()))),
    (r"(\d+(?:\.\d+)?)% are plain question", pct(1 - sum(TASKS.values()))),
    (r"first step \((\d+(?:\.\d+)?)% of the corpus", pct(TASKS["first"])),
    (r"first two steps \((\d+(?:\.\d+)?)%\)", pct(TASKS["two"])),
    (r"final answer \((\d+(?:\.\d+)?)%\)", pct(TASKS["answer"])),
    (r"full solution \((\d+(?:\.\d+)?)%\)", pct(TASKS["full"])),
    (r"(\d+(?:\.\d+)?)% of the examples carry a whole solution", pct(1 - sum(TASKS.values()) + TASKS["full"])),
    (r"([\d,]+) questions of 3-5 steps", BUILD["pretrain_questions"]),
    (r"on ([\d,]+) questions of which", BUILD["pretrain_questions"]),
    (r"([\d,]+) steps of (?:batch )?16\b", BUILD["steps"]),
    (r"([\d.]+) nats/token \(plain prompt", GATES["opening"]["nll_instructed"]),
    (r"nats/token \(plain prompt: ([\d.]+)\)", GATES["opening"]["nll_plain"]),
    (r"plain-prompt greedy accuracy \| ([\d.]+)%", pct(GATES["plain"]["accuracy"])),
    (r"\(([\d.]+) tokens on average, no boxed answer", GATES["instructed"]["mean_tokens"]),
    (r"([\d.]+)% of them open with the same first line", pct(GATES["instructed"]["first_line_as_plain"])),
    (r"opening cost ~?([\d.]+) nats per token under the plain", GATES["opening"]["nll_plain"]),
]


def flat(text):
    """The text on one line, markdown emphasis and backticks removed (a phrase may wrap or be bold)."""
    return re.sub(r"\s+", " ", re.sub(r"[*`]", "", text))


def wrong_figures(text, claims=CLAIMS):
    """[(phrase found, the figure written, the shipped figure)] for every figure that differs from the
    shipped one at the precision it is written with (3.6 matches 3.62; 28 does not match 40)."""
    wrong = []
    for pattern, shipped in claims:
        for m in re.finditer(pattern, flat(text)):
            written = m.group(1).replace(",", "")
            decimals = len(written.split(".")[1]) if "." in written else 0
            if abs(float(written) - shipped) > 0.5 * 10 ** -decimals + 1e-9:
                wrong.append((m.group(0), written, round(shipped, 4)))
    return wrong


DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_docs_quote_the_shipped_toy_world(doc):
    wrong = wrong_figures(doc.read_text())
    assert wrong == [], f"{doc.relative_to(ROOT)} quotes figures that are not assets/toy's: {wrong}"


def test_the_docs_do_quote_them():
    """Not vacuous: the corpus shares and both gates are quoted somewhere."""
    found = {p for p, _ in CLAIMS for d in DOCS if re.search(p, flat(d.read_text()))}
    assert {CLAIMS[0][0], CLAIMS[10][0], CLAIMS[12][0]} <= found, sorted(found)


def test_a_planted_wrong_figure_is_found():
    planted = ("pretrained on 57,600 questions of which 28% carry an\ninstruction; only the first step "
               "(**16%** of the corpus), the full solution (12%). | plain-prompt greedy accuracy | 58.0% |")
    assert [w[1] for w in wrong_figures(planted)] == ["28", "58.0"]
    assert wrong_figures(planted.replace("28%", "40%").replace("58.0%", "63.0%")) == []
