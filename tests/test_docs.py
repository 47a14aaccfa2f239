"""Every local link of the docs resolves: each `[text](target)` of a tracked Markdown file names an
existing file (relative to the file that links it) and, with `#anchor`, a heading of that file
whose GitHub anchor is `anchor`."""

import re
import subprocess

import pytest

from maet.schema.resolvers import PROJECT_ROOT

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (letters, digits, spaces, `-`
    and `_` kept), spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a Markdown file's headings (outside code fences), repeats numbered as GitHub does."""
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", text).splitlines():
        if re.match(r"#{1,6} ", line):
            slug = anchor(line.lstrip("#"))
            out.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return out


def markdown_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "*.md"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    return [f for f in listed.stdout.split() if (PROJECT_ROOT / f).is_file()]


def broken_links(name: str) -> list[str]:
    path = PROJECT_ROOT / name
    text = FENCE.sub("", path.read_text())
    broken = []
    for match in LINK.finditer(text):
        target = match.group(1) or match.group(2)
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked here
            continue
        file_part, _, fragment = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{name}: {target} (no such file)")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked.read_text()):
            broken.append(f"{name}: {target} (no such heading)")
    return broken


@pytest.mark.parametrize("heading, expected", [
    ("The first world and the diagnosis (`experiment=world`)", "the-first-world-and-the-diagnosis-experimentworld"),
    ("Fair tuning on the testbed (Swahili)", "fair-tuning-on-the-testbed-swahili"),
    ("Running at scale: 8 GPUs, SLURM, vLLM", "running-at-scale-8-gpus-slurm-vllm"),
])
def test_anchors_are_githubs(heading, expected):
    assert anchor(heading) == expected


def test_a_broken_link_is_found(tmp_path, monkeypatch):
    monkeypatch.setattr("test_docs.PROJECT_ROOT", tmp_path)
    (tmp_path / "a.md").write_text("# Title\n\n[ok](#title) [file](b.md) [gone](c.md) [bad](b.md#nowhere)\n"
                                   "```\n[in code](nowhere.md)\n```\n")
    (tmp_path / "b.md").write_text("## Somewhere\n")
    assert broken_links("a.md") == ["a.md: c.md (no such file)", "a.md: b.md#nowhere (no such heading)"]


def test_every_local_link_and_anchor_of_the_docs_resolves():
    broken = [b for name in markdown_files() for b in broken_links(name)]
    assert not broken, "\n".join(broken)
