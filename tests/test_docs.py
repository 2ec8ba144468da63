"""Every reference in the project points to something in the project; the README and the pages of docs/
document what the code does, and every command they give runs with flags its script has."""
import argparse
import importlib
import re
import shlex
import subprocess
from functools import cache
from pathlib import Path

import pytest

import train
from evaluation.protocol import RESUME_MAY_CHANGE

ROOT = Path(__file__).resolve().parents[1]


def tracked_names() -> list[str]:
    """Every tracked (or new, not ignored) file, relative to the root."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True)
    return listed.stdout.split() if listed.returncode == 0 else [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")]


def tracked_texts() -> dict[str, str]:
    """The text of every tracked .py, .sh and .md file, with lines joined (a comment's `#` at the start of
    a line is dropped, so that a reference may run on to the next comment line)."""
    here = str(Path(__file__).relative_to(ROOT))  # its patterns are not references
    texts = {}
    for name in tracked_names():
        if name.endswith((".py", ".sh", ".md")) and (ROOT / name).is_file() and name != here:
            text = (ROOT / name).read_text(encoding="utf-8")
            if not name.endswith(".md"):
                text = re.sub(r"\n[ \t]*#", "\n", text)
            texts[name] = " ".join(text.split())
    return texts


TEXTS = tracked_texts()
PAGES = {name: (ROOT / name).read_text(encoding="utf-8")
         for name in ["README.md"] + sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))}


@cache
def headings(page: str) -> list[str]:
    """The headings of a markdown page, without their #s (lines in fenced code blocks are not headings)."""
    text = re.sub(r"^```.*?^```", "", (ROOT / page).read_text(encoding="utf-8"), flags=re.S | re.M)
    return [line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")]


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_no_reference_to_documents_outside_the_project():
    outside = ["DESIGN.md", "DESIGN §"]
    assert [name for name, text in TEXTS.items() if any(word in text for word in outside)] == []


def test_section_references_resolve():
    found = 0
    for name, text in TEXTS.items():
        for page, section in re.findall(r"(docs/[\w-]+\.md) §(\d+)", text):
            found += 1
            assert any(h.startswith(f"{section}. ") for h in headings(page)), f"{name}: {page} §{section}"
        assert "§" not in re.sub(r"docs/[\w-]+\.md §\d+", "", text), f"{name}: a § that names no docs page"
    assert found >= 10  # the losses, datasets, models and visualization docstrings cite docs/method.md


def test_named_sections_resolve():
    """`the README's "Section"` names a README heading, `docs/page.md "Section"` (or `docs/page.md, "Section"`,
    `docs/page.md: "Section"`) a heading of that page; a heading is named by its beginning."""
    quoted = r"(?:'s|:|,)? (?:\"([^\"]+)\"|'([^']+)'|\*([^*]+)\*)"
    found = {"README.md": 0, "docs": 0}
    for name, text in TEXTS.items():
        for page, *names in re.findall(r"(README|docs/[\w-]+\.md)" + quoted, text):
            page = "README.md" if page == "README" else page
            section = "".join(names)
            found["README.md" if page == "README.md" else "docs"] += 1
            assert (ROOT / page).is_file(), f"{name}: {page} does not exist"
            assert any(h.startswith(section) for h in headings(page)), f"{name}: {page} section {section!r}"
    assert found["README.md"] >= 3 and found["docs"] >= 10, found


def test_named_pages_exist():
    for name, text in TEXTS.items():
        for page in re.findall(r"\bdocs/[\w-]+\.md\b", text):
            assert (ROOT / page).is_file(), f"{name}: {page}"


def test_linked_files_and_anchors_exist():
    for name, text in TEXTS.items():
        if not name.endswith(".md"):
            continue
        for target in re.findall(r"\]\(((?!https?:)[^)\s]+)\)", text):
            path, _, fragment = target.partition("#")
            page = (ROOT / Path(name).parent / path) if path else ROOT / name
            assert page.exists(), f"{name}: link to {target}"
            if fragment:
                assert page.suffix == ".md", f"{name}: {target}: an anchor into a file that is no page"
                found = [anchor(h) for h in headings(str(page.resolve().relative_to(ROOT)))]
                assert fragment in found, f"{name}: link to {target}: no such heading"


@pytest.mark.parametrize("page, section, script, flags", [
    ("docs/downstream.md", "## Stopping and resuming a run", "eval_linear.py", RESUME_MAY_CHANGE),
    ("docs/pretraining.md", "**A resume keeps the run's flags.**", "train.py", train.RESUME_MAY_CHANGE)])
def test_the_docs_list_the_flags_a_resume_may_change(page, section, script, flags):
    """The evaluation tools' table and train.py's, each against the list its code uses (of the flags'
    names, ``dest``: the table spells a flag as its help does, e.g. ``--epoch`` for ``epochs``)."""
    text = PAGES[page]
    table = text[text.index(section):]
    table = table[:table.index("\n\n", table.index("| flag |"))]
    rows = [line.strip() for line in table.splitlines() if line.strip().startswith("| `")]
    named = re.findall(r"`--([\w-]+)`", "".join(row.split("|")[1] for row in rows))
    actions = parser_of(script)._option_string_actions
    listed = sorted(actions[f"--{name}"].dest for name in named)
    assert listed == sorted(flags)


@pytest.mark.parametrize("needle", ["MIT License", "Copyright (c) 2026 the mfo authors"])
def test_the_licence_is_mit_and_the_readme_says_so(needle):
    assert needle in (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "MIT License" in TEXTS["README.md"] and "[`LICENSE`](LICENSE)" in TEXTS["README.md"]


def test_the_readme_begins_with_the_demo_and_the_tests_and_ci_runs_the_latter():
    lines = PAGES["README.md"].splitlines()
    commands = [line.strip() for line in lines[:20] if line.startswith("    ")]
    assert commands == [
        "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt -e . && .venv/bin/python train.py --demo",
        "python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt -e . && .venv/bin/python -m pytest -q"]
    ci = [line for line in (ROOT / ".ci/run").read_text(encoding="utf-8").splitlines()
          if line and not line.startswith(("#", "set ", "cd "))]
    assert " && ".join(ci) == commands[1]


# --- every command of every page runs with flags its script has ---

SCRIPT = re.compile(r"(?:\./)?((?:train|eval_linear|finetune)\.py|(?:visualization|scripts)/[\w-]+\.(?:py|sh))")
LAUNCHER = re.compile(r"(?:[A-Z_]+=\S*\s+)*(?:\S*/)?(?:python3?|torchrun|bash)\b")
FLAG = re.compile(r"-{1,2}[A-Za-z][\w-]*")
END = ("&&", "||", ";", "|")
# a flag whose value is another command line: the flags in the value are that script's
NESTED = {("scripts/ablation.py", "--train_args"): "train.py"}
# flags of tools that are not ours, allowed in an inline `--flag` that names no script
# torchrun's, tensorboard's and sbatch's flags, which pages name in passing
FOREIGN_FLAGS = {"--nnodes", "--node_rank", "--nproc_per_node", "--rdzv_backend", "--rdzv_endpoint", "--max-restarts",
                 "--logdir", "--signal", "--requeue"}


def command_units(text: str) -> tuple[list[str], list[str]]:
    """(command lines, inline code spans) of a markdown text. A command line is a line of a code block
    (fenced, or indented, also inside a list) that starts with a launcher (python, torchrun, bash), with the
    lines it continues with a trailing backslash; an inline span may run over a line break."""
    lines, rest = [], []
    in_fence = False
    raw = text.splitlines()
    i = 0
    while i < len(raw):
        line = raw[i]
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            i += 1
            continue
        indented = in_fence or (line.startswith("    ") and "`" not in line)
        if indented and LAUNCHER.match(line.strip()):
            command = line.strip()
            while command.endswith("\\") and i + 1 < len(raw):
                i += 1
                command = command[:-1] + " " + raw[i].strip()
            lines.append(" ".join(command.split()))
        elif not in_fence and not indented:
            rest.append(line)
        i += 1
    spans = [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", "\n".join(rest))]
    return lines, spans


class _Captured(Exception):
    pass


@cache
def parser_of(script: str) -> argparse.ArgumentParser:
    """The command-line parser of one of our scripts: get_args_parser() where there is one, else the parser
    that its parse_args (or main) builds, caught as it starts to parse."""
    module = importlib.import_module(script[:-len(".py")].replace("/", "."))
    if hasattr(module, "get_args_parser"):
        return module.get_args_parser()
    original = argparse.ArgumentParser.parse_known_args

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    argparse.ArgumentParser.parse_known_args = capture
    try:
        (getattr(module, "parse_args", None) or module.main)([])
    except _Captured as caught:
        return caught.args[0]
    finally:
        argparse.ArgumentParser.parse_known_args = original
    raise AssertionError(f"{script} parses no command line")


def options(parser: argparse.ArgumentParser, words: list[str]) -> set[str]:
    """The option strings a command line of this parser may use; with subcommands, those of the one the
    words name (of all of them when they name none)."""
    found = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            named = [action.choices[word] for word in words if word in action.choices][:1]
            for sub in named or action.choices.values():
                found |= set(sub._option_string_actions)
    return found


def flags_of(words: list[str]) -> list[tuple[str, str | None]]:
    """(flag, its value when written --flag=value or as the next word) of the words of a command line."""
    found = []
    for k, word in enumerate(words):
        word = word.strip("[]")
        if FLAG.fullmatch(word.split("=", 1)[0]):
            flag, _, value = word.partition("=")
            found.append((flag, value or (words[k + 1] if k + 1 < len(words) else None)))
    return found


def check_command(unit: str, where: str, *, inline: bool) -> list[str]:
    """The problems of one command line or inline span: a script that does not exist, a flag its parser does
    not have (flags before the script, torchrun's, are not checked); an inline span of flags alone, such as
    `--resume auto`, must name flags of one of our scripts (or of torchrun or tensorboard)."""
    try:
        words = shlex.split(unit)
    except ValueError:
        words = unit.split()
    problems = []
    for k, word in enumerate(words):
        match = SCRIPT.fullmatch(word)
        if not match or not (k == 0 or LAUNCHER.fullmatch(words[k - 1]) or "torchrun" in words[:k]):
            continue
        script = match.group(1)
        if not (ROOT / script).is_file():
            problems.append(f"{where}: {script} does not exist: {unit}")
            continue
        args = []
        for arg in words[k + 1:]:
            if arg.startswith("#") or arg in END:
                break
            args.append(arg)
        if not script.endswith(".py"):
            continue
        if script == "scripts/submit.py" and "--" in args:  # submit.py's flags -- the flags of the job's script
            inner = args[args.index("--") + 1:]
            args = args[:args.index("--")]
            target = args[args.index("--script") + 1] if "--script" in args[:-1] else "train.py"
            problems += check_flags(target, inner, where, unit)
        problems += check_flags(script, args, where, unit)
    if inline and not any(SCRIPT.fullmatch(word) for word in words) and words and words[0].startswith("--"):
        known = FOREIGN_FLAGS.union(*(options(parser_of(s), []) for s in our_scripts()))
        problems += [f"{where}: {flag} is no flag of any script: {unit}"
                     for flag, _ in flags_of(words) if flag.startswith("--") and flag not in known]
    return problems


def check_flags(script: str, args: list[str], where: str, unit: str) -> list[str]:
    """The flags of ``args`` that ``script`` does not have, also inside a value that is a command line."""
    allowed = options(parser_of(script), args)
    problems = []
    for flag, value in flags_of(args):
        if flag not in allowed:
            problems.append(f"{where}: {script} has no {flag}: {unit}")
        if (script, flag) in NESTED and value:
            problems += check_flags(NESTED[script, flag], shlex.split(value), where, unit)
    return problems


@cache
def our_scripts() -> tuple[str, ...]:
    """Every script with a command line of its own."""
    names = ["train.py", "eval_linear.py", "finetune.py", "visualization/temporal_cam.py"]
    scripts = sorted(f"scripts/{p.name}" for p in (ROOT / "scripts").glob("*.py") if p.name != "__init__.py")
    return tuple(names + scripts)


def test_command_units_and_checks():
    """The extraction on a page of every kind of command, and a wrong flag, script and nested flag found."""
    page = "\n".join([
        "Prose with `python train.py --demo --epoch\n2` over a line break and `--resume auto` alone.",
        "",
        "    # a comment: python train.py --no_such_flag",
        "    torchrun --nproc_per_node 8 --max-restarts 3 train.py --csv_file kinetics.csv \\",
        "        --resume auto ... # --not_checked",
        "    .venv/bin/python scripts/make_csv.py ucf101 --root UCF-101 --split 1 && pip install -q numpy",
        "",
        "```",
        "python scripts/ablation.py --out runs/a --train_args=\"--jitter 0 0 0 0 --gray_p 0\"",
        "```",
    ])
    lines, spans = command_units(page)
    assert lines == ["torchrun --nproc_per_node 8 --max-restarts 3 train.py --csv_file kinetics.csv "
                     "--resume auto ... # --not_checked",
                     ".venv/bin/python scripts/make_csv.py ucf101 --root UCF-101 --split 1 && pip install -q numpy",
                     "python scripts/ablation.py --out runs/a --train_args=\"--jitter 0 0 0 0 --gray_p 0\""]
    assert spans == ["python train.py --demo --epoch 2", "--resume auto"]
    assert [p for unit in lines for p in check_command(unit, "page", inline=False)] == []
    assert [p for unit in spans for p in check_command(unit, "page", inline=True)] == []
    bad = [("python train.py --epochs 3", "train.py has no --epochs"),
           ("python scripts/make_csv.py frames --split 1", "scripts/make_csv.py has no --split"),
           ("python scripts/no_such.py --x", "scripts/no_such.py does not exist"),
           ("python scripts/ablation.py --train_args='--jitter 0 0 0 0 --nope 1'", "train.py has no --nope"),
           ("--no_such_flag 3", "--no_such_flag is no flag of any script")]
    for unit, problem in bad:
        found = check_command(unit, "page", inline=unit.startswith("--"))
        assert len(found) == 1 and problem in found[0], (unit, found)


@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_command_and_flag_of_a_page_exists(page):
    lines, spans = command_units(PAGES[page])
    problems = [p for unit in lines for p in check_command(unit, page, inline=False)]
    problems += [p for unit in spans for p in check_command(unit, page, inline=True)]
    assert problems == []
    if page in ("README.md", "docs/data.md", "docs/pretraining.md", "docs/downstream.md", "docs/benchmarks.md"):
        assert any(SCRIPT.search(unit) for unit in lines + spans), f"{page}: no command found"
