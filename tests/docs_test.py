"""The documentation: every relative link of README.md and docs/ leads to a file or folder that exists, every anchor
to a heading of its page, and the README stays short with the two set-up commands first."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _anchors(page: pathlib.Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def _links(page: pathlib.Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold commands, not links
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+:", target)]  # http:, mailto: ...


def _broken(page: pathlib.Path) -> list[str]:
    """The relative links of `page` whose file, or whose anchor in a Markdown page, does not exist."""
    broken = []
    for target in _links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists() or (anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved)):
            broken.append(target)
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert not _broken(page), f"{page.relative_to(ROOT)}: broken links {_broken(page)}"


def test_the_link_checker_finds_the_broken_links(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A title, with (punctuation)\n[ok](page.md#a-title-with-punctuation) [gone](missing.md) "
                    "[bad anchor](#nowhere) [web](https://example.org) ![figure](page.md)\n"
                    "```\n[in code](ignored.md)\n```\n")
    assert _links(page) == ["page.md#a-title-with-punctuation", "missing.md", "#nowhere", "page.md"]
    assert _broken(page) == ["missing.md", "#nowhere"]


def test_the_readme_is_short_and_starts_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    commands = lines[lines.index("```bash") + 1:lines.index("```bash") + 3]
    assert commands[0].endswith("python -m fcn_jax.main --config experiments/demo.py --workdir runs/demo")
    assert commands[1].endswith("python -m pytest -q") and all("pip install" in c for c in commands)
    assert (ROOT / ".ci" / "run").read_text().count("python -m pytest -q") == 1  # CI runs the README's test command
