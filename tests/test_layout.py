"""The project's import graph keeps data flowing one way (docs/method.md §7).

Every import of every module is read from its source (those inside functions too), so a lazy
import cannot hide an edge; one subprocess check confirms what ``import models`` really loads.
"""
import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = {"train", "eval_linear", "finetune"}
LIBRARIES = ("datasets", "models", "losses", "engine", "evaluation")
FIRST_PARTY = set(LIBRARIES) | ENTRY_POINTS | {"scripts", "visualization", "tests"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Dotted names of the first-party modules ``path`` imports (absolute or relative, anywhere in the file)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {name for name in found if name.split(".")[0] in FIRST_PARTY}


def project_files() -> list[Path]:
    """Every .py file of the project: the entry points at the root and those of its packages (no .venv)."""
    return [p for p in ROOT.rglob("*.py")
            if p.parent == ROOT or p.relative_to(ROOT).parts[0] in FIRST_PARTY - ENTRY_POINTS]


def graph() -> dict[str, set[str]]:
    """``{module: first-party modules it imports}`` for every module of the project."""
    return {module_name(p): imports_of(p) for p in project_files()}


EDGES = graph()


def top(name: str) -> str:
    return name.split(".")[0]


def offenders(sources: set[str], forbidden: set[str]) -> list[str]:
    return sorted(f"{src} imports {dst}" for src, targets in EDGES.items() if top(src) in sources
                  for dst in targets if top(dst) in forbidden or dst in forbidden)


def test_the_reader_sees_relative_lazy_and_from_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "losses"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .total import x\n")
    (pkg / "total.py").write_text("def f():\n    from engine import distributed\n    import models.mfo\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert imports_of(pkg / "__init__.py") == {"losses.total", "losses.total.x"}
    assert imports_of(pkg / "total.py") == {"engine", "engine.distributed", "models.mfo"}


def test_the_graph_covers_the_project():
    assert {"train", "losses.total", "models.mfo", "evaluation.protocol", "engine.checkpoint",
            "datasets.pretrain", "visualization.temporal_cam", "scripts.extract_features"} <= set(EDGES)
    assert "losses.contrast" in EDGES["losses"] and "engine.distributed" in EDGES["losses.contrast"]


def test_method_packages_import_no_entry_point_script_or_evaluation():
    assert offenders({"datasets", "models", "losses", "engine"},
                     ENTRY_POINTS | {"scripts", "evaluation", "visualization"}) == []


def test_models_and_losses_do_not_import_each_other():
    assert offenders({"models"}, {"losses"}) == [] and offenders({"losses"}, {"models"}) == []


def test_models_import_nothing_but_models():
    assert offenders({"models"}, FIRST_PARTY - {"models"}) == []


def test_engine_is_generic():
    assert offenders({"engine"}, {"models", "losses", "datasets", "evaluation"}) == []


def test_only_losses_use_the_distributed_helpers_among_method_packages():
    assert offenders({"datasets", "models"}, {"engine.distributed"}) == []
    assert offenders({"losses"}, {"engine.distributed"}) != []  # the rule is live: losses do gather


@pytest.mark.parametrize("package", LIBRARIES)
def test_library_functions_take_named_values_not_the_parser_namespace(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for arg in node.args.posonlyargs + node.args.args + node.args.kwonlyargs:
                    annotation = ast.unparse(arg.annotation) if arg.annotation else ""
                    if arg.arg == "args" or "Namespace" in annotation:
                        bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}({arg.arg})")
    assert bad == []


def test_importing_models_loads_no_other_project_package():
    code = ("import sys, models; "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(FIRST_PARTY)!r})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['models']"


def test_the_level_names_are_defined_once():
    """``LEVELS`` (the backbone's maps, low to high) has one home, models/backbones.py; others import it."""
    homes = [module_name(p) for p in project_files()
             for node in ast.parse(p.read_text(encoding="utf-8")).body if isinstance(node, (ast.Assign, ast.AnnAssign))
             for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
             if isinstance(target, ast.Name) and target.id == "LEVELS"]
    assert homes == ["models.backbones"]


def test_no_module_edits_the_import_path():
    """The tools import the project's packages through the installed checkout (pyproject.toml), not by
    putting the repository root on ``sys.path`` themselves."""
    edits = [f"{module}: sys.path.{node.attr}" for module, path in
             ((module_name(p), p) for p in project_files())
             for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, ast.Attribute) and node.attr in ("insert", "append", "extend")
             and ast.unparse(node.value) == "sys.path"]
    assert edits == []


def test_the_install_covers_every_package_and_entry_point():
    """pyproject.toml installs every package of the checkout (tests aside) and every script at its root."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert sorted(config["packages"]) == sorted(packages)
    assert sorted(config["py-modules"]) == sorted(p.stem for p in ROOT.glob("*.py")) == sorted(ENTRY_POINTS)


@pytest.mark.parametrize("script", ["scripts/make_csv.py", "scripts/make_demo_data.py", "visualization/temporal_cam.py"])
def test_the_tools_run_from_another_folder(tmp_path, script):
    """Run as files from outside the checkout, the tools find its packages (installed by `pip install -e .`)."""
    done = subprocess.run([sys.executable, str(ROOT / script), "--help"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "usage:" in done.stdout, f"{done.stderr}\n(is the checkout installed? the " \
                                                             "README's commands run `pip install -e .`)"
