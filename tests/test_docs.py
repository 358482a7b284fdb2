"""The README and docs/: short README, links that resolve, the test command CI runs.

- README.md is at most 300 lines (the details live under docs/);
- every relative link in README.md and docs/*.md names an existing file, and an
  ``#anchor`` names a heading of that Markdown file (GitHub's heading ids);
- the README's test command is what ``.ci/run`` runs: the same steps in the same order
  (``.ci/run`` adds ``-q`` to pip), ending in exactly ``.ci/run``'s last command line;
- ``.snakemake-workflow-catalog.yml`` is the catalog's format and asks for conda.
"""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

FENCE = re.compile(r"^```.*?^```[ \t]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose(text):
    """The text outside fenced code blocks."""
    return FENCE.sub("", text)


def _code_lines(text):
    """The lines inside fenced code blocks."""
    return [line for block in FENCE.findall(text) for line in block.splitlines()[1:-1]]


def _github_anchor(heading):
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path):
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", _prose(path.read_text()), re.M)
    return {_github_anchor(h) for h in headings}


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= 300, f"README.md has {n} lines; move details under docs/"


def test_docs_exist_and_readme_links_each():
    assert DOCS, "docs/ holds no Markdown page"
    links = set(LINK.findall(_prose(README.read_text())))
    unlinked = [p.name for p in DOCS if not any(t.split("#")[0] == f"docs/{p.name}" for t in links)]
    assert not unlinked, f"README.md does not link {unlinked}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(INLINE_CODE.sub("", _prose(page.read_text()))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(ROOT)}")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def _ci_commands():
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    commands = [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]
    return [c for c in commands if c.split()[0] not in {"set", "cd"}]


def _readme_test_command():
    found = [s.strip() for s in _code_lines(README.read_text()) if "-m pytest" in s]
    assert len(found) == 1, f"README.md shows {len(found)} test commands, not one: {found}"
    return found[0]


def test_readme_test_command_is_what_ci_runs():
    readme = _readme_test_command()
    ci = _ci_commands()
    assert readme.split(" && ")[-1] == ci[-1]
    assert readme == " && ".join(re.sub(r" -q(?= )", "", c) for c in ci)


def test_docs_show_the_readme_test_command():
    readme = _readme_test_command()
    for page in DOCS:
        for line in _code_lines(page.read_text()):
            if ".venv/bin/python -m pytest" in line and " && " in line:
                assert line.strip() == readme, f"{page.name} shows another test command"


def test_workflow_catalog_file():
    catalog = yaml.safe_load((ROOT / ".snakemake-workflow-catalog.yml").read_text())
    usage = catalog["usage"]
    assert usage["mandatory-flags"]["desc"].strip()
    assert "--use-conda" in usage["mandatory-flags"]["flags"]
    deploy = usage["software-stack-deployment"]
    assert deploy["conda"] is True
    assert set(deploy) <= {"conda", "singularity", "singularity+conda", "report"}
