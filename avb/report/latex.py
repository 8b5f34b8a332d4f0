"""Markdown to LaTeX for the subset our reports are written in, so ``paper/main.tex`` says what
``paper/replication.md`` says.

The subset: ``#``/``##``/``###`` headings, paragraphs, ``* `` bullets, pipe tables, ``![caption](path)`` figures,
fenced code, and inline ```code``` and ``**bold**``. The output is plain ASCII (pdflatex needs no Unicode set-up):
the symbols our tables use are mapped to LaTeX, anything else becomes ``?``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

SYMBOLS = {"±": r"$\pm$", "≈": r"$\approx$", "−": "-", "×": r"$\times$", "—": "---", "–": "--", "→": r"$\to$",
           "≤": r"$\le$", "≥": r"$\ge$", "‖": r"$\|$", "·": r"$\cdot$", "²": r"$^2$", "σ": r"$\sigma$",
           "ε": r"$\epsilon$", "μ": r"$\mu$", "τ": r"$\tau$", "η": r"$\eta$", "θ": r"$\theta$", "β": r"$\beta$",
           "Σ": r"$\Sigma$", "…": r"\dots{}", "’": "'", "“": "``", "”": "''", "é": r"\'e", "ä": r"\"a", "ö": r"\"o", "ø": r"{\o}"}
SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
           "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "|": r"\textbar{}", "<": r"\textless{}",
           ">": r"\textgreater{}"}
INLINE = re.compile(r"`([^`]*)`|\*\*([^*]+)\*\*")
FIGURE = re.compile(r"^!\[(.*)\]\((.+)\)$")


def _plain(text: str) -> str:
    out = []
    for ch in text:
        if ch in SPECIAL:
            out.append(SPECIAL[ch])
        elif ch in SYMBOLS:
            out.append(SYMBOLS[ch])
        else:
            out.append(ch if ord(ch) < 128 else "?")
    return "".join(out)


def escape(text: str) -> str:
    """One line of Markdown text as LaTeX: ```code``` as \\texttt, ``**bold**`` as \\textbf, the rest escaped."""
    out, pos = [], 0
    for m in INLINE.finditer(text):
        out.append(_plain(text[pos:m.start()]))
        out.append(r"\texttt{" + _plain(m.group(1)) + "}" if m.group(1) is not None
                   else r"\textbf{" + _plain(m.group(2)) + "}")
        pos = m.end()
    out.append(_plain(text[pos:]))
    return "".join(out)


def _cells(row: str) -> list[str]:
    """The cells of a pipe-table row; ``\\|`` is a literal pipe inside a cell (as GitHub reads it)."""
    cells = re.split(r"(?<!\\)\|", row.strip().removeprefix("|").removesuffix("|"))
    return [c.strip().replace("\\|", "|") for c in cells]


def table(lines: list[str]) -> str:
    """A Markdown pipe table as a booktabs tabular; columns with long cells wrap (ragged right), and the whole is
    shrunk to the line width only when it is still too wide.

    A pipe inside a cell is written ``\\|``.
    """
    rows = [_cells(r) for r in lines if not re.fullmatch(r"\|?(\s*:?-+:?\s*\|)+\s*:?-*:?\s*", r.strip())]
    if len({len(r) for r in rows}) != 1:
        raise ValueError(f"table rows have different numbers of cells: {[len(r) for r in rows]}")
    spec = []
    for col in zip(*rows):
        longest = max(len(c) for c in col)
        spec.append(r">{\raggedright\arraybackslash}p{%.1fem}" % min(0.5 * longest, 16) if longest > 24 else "l")
    body = [r"\begin{adjustbox}{max width=\linewidth}", r"\begin{tabular}{" + "".join(spec) + "}", r"\toprule",
            " & ".join(escape(c) for c in rows[0]) + r" \\", r"\midrule"]
    body += [" & ".join(escape(c) for c in r) + r" \\" for r in rows[1:]]
    body += [r"\bottomrule", r"\end{tabular}", r"\end{adjustbox}"]
    return "\n".join(body) + "\n"


def document(md: str, title: str, table_file: Callable[[int, str], str], figure_file: Callable[[str], str]) -> str:
    """A complete LaTeX article from Markdown ``md``. Each table is written by ``table_file(index, tabular)``, which
    returns the path to ``\\input``; each figure's path goes through ``figure_file`` (e.g. PNG -> PDF)."""
    body: list[str] = []
    lines = md.splitlines()
    i, n_tables, in_list = 0, 0, False

    def close_list() -> None:
        nonlocal in_list
        if in_list:
            body.append(r"\end{itemize}")
            in_list = False

    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            close_list()
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
            body += [r"{\scriptsize", r"\begin{verbatim}", *("".join(c if c.isascii() else "?" for c in x) for x in lines[i + 1:end]), r"\end{verbatim}",
                     "}"]
            i = end + 1
            continue
        if line.startswith("|"):
            close_list()
            end = next((j for j in range(i, len(lines)) if not lines[j].startswith("|")), len(lines))
            n_tables += 1
            path = table_file(n_tables, table(lines[i:end]))
            body += [r"\begin{table}[htbp]\centering\scriptsize", r"\input{" + path + "}", r"\end{table}"]
            i = end
            continue
        heading = re.match(r"^(#{1,3}) (.*)$", line)
        figure = FIGURE.match(line)
        if heading:
            close_list()
            cmd = {1: "section", 2: "subsection", 3: "subsubsection"}[len(heading.group(1))]
            body.append(f"\\{cmd}*{{{escape(heading.group(2))}}}")
        elif figure:
            close_list()
            body += [r"\begin{figure}[htbp]\centering",
                     r"\includegraphics[width=\linewidth,height=0.8\textheight,keepaspectratio]{"
                     + figure_file(figure.group(2)) + "}", r"\caption{" + escape(figure.group(1)) + "}",
                     r"\end{figure}"]
        elif line.startswith("* "):
            if not in_list:
                body.append(r"\begin{itemize}")
                in_list = True
            body.append(r"\item " + escape(line[2:]))
        elif line.strip():
            close_list()
            body.append(escape(line))
        else:
            close_list()
            body.append("")
        i += 1
    close_list()
    head = [r"\documentclass[10pt]{article}", r"\usepackage[T1]{fontenc}",
            r"\IfFileExists{lmodern.sty}{\usepackage{lmodern}}{}",
            r"\usepackage{adjustbox,array,booktabs,graphicx,geometry,float}", r"\geometry{margin=2cm}",
            r"\setlength{\parindent}{0pt}\setlength{\parskip}{0.5em}\sloppy", r"\begin{document}",
            r"\title{" + escape(title) + "}", r"\date{}", r"\maketitle"]
    return "\n".join(head + body + [r"\end{document}"]) + "\n"


def pdf_if_present(path: str, root: Path) -> str:
    """The PDF beside a PNG figure when it exists under ``root`` (vector graphics in the PDF build), else ``path``."""
    pdf = Path(path).with_suffix(".pdf")
    return str(pdf) if path.endswith(".png") and (root / pdf).exists() else path
