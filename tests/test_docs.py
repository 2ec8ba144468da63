"""Every reference in the project points to something in the project; the README documents what the code does."""
import re
import subprocess
from pathlib import Path

import pytest

import train
from evaluation.protocol import RESUME_MAY_CHANGE

ROOT = Path(__file__).resolve().parents[1]


def tracked_texts() -> dict[str, str]:
    """The text of every tracked (or new, not ignored) .py and .md file, with lines joined."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True)
    names = listed.stdout.split() if listed.returncode == 0 else [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")]
    here = str(Path(__file__).relative_to(ROOT))  # its patterns are not references
    return {name: " ".join((ROOT / name).read_text(encoding="utf-8").split())
            for name in names if name.endswith((".py", ".md")) and (ROOT / name).is_file() and name != here}


TEXTS = tracked_texts()
HEADINGS = [line.lstrip("#").strip() for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
            if line.startswith("#")]


def test_no_reference_to_documents_outside_the_project():
    outside = ["DESIGN.md", "DESIGN §"]
    assert [name for name, text in TEXTS.items() if any(word in text for word in outside)] == []


def test_section_references_resolve():
    found = 0
    for name, text in TEXTS.items():
        for page, section in re.findall(r"(docs/[\w-]+\.md) §(\d+)", text):
            found += 1
            headings = (ROOT / page).read_text(encoding="utf-8").splitlines()
            assert any(h.startswith(f"## {section}. ") for h in headings), f"{name}: {page} §{section}"
        assert "§" not in re.sub(r"docs/[\w-]+\.md §\d+", "", text), f"{name}: a § that names no docs page"
    assert found >= 10  # the losses, datasets, models and visualization docstrings cite docs/method.md


def test_readme_section_references_resolve():
    found = 0
    for name, text in TEXTS.items():
        for section in re.findall(r"README(?:'s|:|,) [\"'*]([^\"'*]+)[\"'*]", text):
            found += 1
            assert any(h.startswith(section) for h in HEADINGS), f"{name}: README section {section!r}"
    assert found >= 5


def test_linked_files_exist():
    for name, text in TEXTS.items():
        if not name.endswith(".md"):
            continue
        for target in re.findall(r"\]\(((?!https?:)[^)#]+)\)", text):
            assert (ROOT / Path(name).parent / target).exists(), f"{name}: link to {target}"


@pytest.mark.parametrize("section, flags", [("### Stopping and resuming a run", RESUME_MAY_CHANGE),
                                            ("**A resume keeps the run's flags.**", train.RESUME_MAY_CHANGE)])
def test_the_readme_lists_the_flags_a_resume_may_change(section, flags):
    """The evaluation tools' table and train.py's, each against the list its code uses."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index(section):]
    table = table[:table.index("\n\n", table.index("| flag |"))]
    rows = [line.strip() for line in table.splitlines() if line.strip().startswith("| `")]
    named = re.findall(r"`--([\w-]+)`", "".join(row.split("|")[1] for row in rows))
    listed = sorted(name.replace("-", "_") for name in named)
    assert listed == sorted(flags)


@pytest.mark.parametrize("needle", ["MIT License", "Copyright (c) 2026 the mfo authors"])
def test_the_licence_is_mit_and_the_readme_says_so(needle):
    assert needle in (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "MIT License" in TEXTS["README.md"] and "[`LICENSE`](LICENSE)" in TEXTS["README.md"]
