"""Reproducible installs (issue 17 item 5): constraints.txt pins every dependency exactly, environment.yml mirrors it."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            pins[_norm(name)] = version
    return pins


def test_every_direct_dependency_is_pinned_exactly():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = [*project["dependencies"], *(d for extra in project.get("optional-dependencies", {}).values() for d in extra)]
    pins = constraints()
    for dep in deps:
        name = _norm(re.split(r"[<>=!~;\[ ]", dep, 1)[0])
        assert name in pins, f"pyproject dependency {dep!r} has no exact pin in constraints.txt"


def test_environment_yml_mirrors_constraints():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    pins = constraints()
    for line in pip:
        name, sep, version = line.partition("==")
        assert sep, f"environment.yml: {line!r} is not an exact pin"
        assert pins.get(_norm(name)) == version, \
            f"environment.yml pins {line!r} but constraints.txt has {pins.get(_norm(name))!r}"


def test_make_setup_uses_the_constraints():
    assert re.search(r"pip install .*-c constraints\.txt", (ROOT / "Makefile").read_text()), \
        "Makefile: `make setup` must install with -c constraints.txt"


def _package(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).parts)


def test_every_folder_of_the_package_is_installed():
    """pyproject lists the packages by name: a folder of avb/ left out of it (avb/commands once) is missing from a
    wheel, so `avb` fails to import there, though an editable install hides it; likewise a data file that no
    package-data pattern covers (the LaTeX templates)."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    files = [p for p in (ROOT / "avb").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    folders = {_package(p.parent) for p in files}
    missing = folders - set(setuptools["packages"])
    assert not missing, f"pyproject.toml [tool.setuptools] packages lacks {sorted(missing)}"
    declared = {(pkg, "." + pattern.rsplit(".", 1)[-1])
                for pkg, patterns in setuptools.get("package-data", {}).items() for pattern in patterns}
    data = {(_package(p.parent), p.suffix) for p in files if p.suffix != ".py"}
    assert data <= declared, f"data files no package-data pattern covers: {sorted(data - declared)}"
