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
