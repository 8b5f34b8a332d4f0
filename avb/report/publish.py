"""Publishing a folder of tracked outputs (``paper/``) all or nothing.

``staged(out, build)`` copies ``out`` to a staging folder beside it, runs ``build`` there, and only if it returns
moves each new or changed file into ``out`` with ``os.replace`` (atomic per file, same file system). An error in
``build`` leaves ``out`` exactly as it was and removes the staging folder. ``paper`` renders ``paper/`` this way
(``avb.report.paper.render``, then latexmk where asked and installed) and writes a stamp listing what it wrote.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable

from .. import io


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def staged(out_dir: str | os.PathLike, build: Callable[[Path], None]) -> dict[str, str]:
    """Run ``build(stage)`` on a copy of ``out_dir``, then move what it added or changed into ``out_dir``; returns
    {relative path: sha256} of the files moved. If ``build`` raises, ``out_dir`` is untouched."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        if out.is_dir():
            shutil.copytree(out, stage, dirs_exist_ok=True)
        before = _digests(stage)
        build(stage)
        changed = {rel: d for rel, d in _digests(stage).items() if before.get(rel) != d}
        for rel in changed:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / rel, out / rel)
        return changed
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def paper(cfg: dict[str, Any], out_dir: str | os.PathLike, inputs: dict[str, str], stamp: str | os.PathLike | None,
          latex: bool = False) -> list[Path]:
    """Render the report of ``cfg`` into ``out_dir`` (``avb.report.paper.render``; with ``latex``, main.tex is built with
    latexmk where installed, a latexmk failure failing the whole render) all or nothing, then write ``stamp``
    (the files it added or changed, with their sha256). Returns those files."""
    from .paper import render

    def build(stage: Path) -> None:
        render(cfg, stage, inputs)
        if latex and shutil.which("latexmk"):
            subprocess.run(["latexmk", "-pdf", "-interaction=nonstopmode", "main.tex"], cwd=stage, check=True)

    written = staged(out_dir, build)
    if stamp is not None:
        io.write_json({"out": str(out_dir), "changed": written}, stamp)
    return [Path(out_dir) / rel for rel in written]
