"""Markdown to LaTeX: the report by pandoc, and the standalone tabulars of the result tables.

``document``: ``paper/replication.md`` as a complete article, converted by pandoc (``pypandoc-binary`` ships it) with
``templates/header.tex`` (Unicode under pdflatex, captions, table and figure sizes) and ``templates/paper.lua``
(figure grids, vector figures). Math written ``$...$`` is math, code keeps every character (``--`` stays two
hyphens), and a backslash outside math is text, never raw LaTeX.

``table``: a Markdown pipe table as a booktabs tabular that ``\\input``s into any preamble (the results' ``table2.tex``
and the toy's Table 1): the symbols our tables use are mapped to LaTeX, any other non-ASCII character is kept as
UTF-8 (LaTeX's default input encoding).
"""
from __future__ import annotations

import re
from pathlib import Path

TEMPLATES = Path(__file__).with_name("templates")
HEADER, FILTER = TEMPLATES / "header.tex", TEMPLATES / "paper.lua"
# pandoc's Markdown without raw TeX (a stray backslash is text) and without smart punctuation (what the Markdown says
# is what the PDF says: ``--`` is never an en-dash, quotes stay straight).
MARKDOWN = "markdown-raw_tex-raw_attribute-smart"
PANDOC_ARGS = ("--standalone", "--shift-heading-level-by=-1", "--syntax-highlighting=none", "--wrap=preserve",
               "-V", "documentclass=article", "-V", "fontsize=10pt", "-V", "papersize=a4", "-V", "geometry:margin=2cm")


def document(md: str, root: str | Path) -> str:
    """A complete LaTeX article of Markdown ``md`` by pandoc: its leading ``# `` heading is the title, ``## `` headings
    are sections; image paths are relative to ``root`` (where main.tex is built)."""
    import pypandoc

    for path in (HEADER, FILTER):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: paper template missing from the installed package")
    return pypandoc.convert_text(md, "latex", format=MARKDOWN, cworkdir=str(root),
                                 extra_args=[*PANDOC_ARGS, f"--include-in-header={HEADER}", f"--lua-filter={FILTER}"])


SYMBOLS = {"±": r"$\pm$", "≈": r"$\approx$", "−": "-", "×": r"$\times$", "—": "---", "–": "--", "→": r"$\to$",
           "≤": r"$\le$", "≥": r"$\ge$", "‖": r"$\|$", "·": r"$\cdot$", "²": r"$^2$", "σ": r"$\sigma$",
           "ε": r"$\epsilon$", "μ": r"$\mu$", "τ": r"$\tau$", "η": r"$\eta$", "θ": r"$\theta$", "β": r"$\beta$",
           "Σ": r"$\Sigma$", "…": r"\dots{}", "’": "'", "“": "``", "”": "''", "é": r"\'e", "ä": r"\"a", "ö": r"\"o", "ø": r"{\o}"}
SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
           "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "|": r"\textbar{}", "<": r"\textless{}",
           ">": r"\textgreater{}"}
INLINE = re.compile(r"`([^`]*)`|\*\*([^*]+)\*\*")


def _plain(text: str) -> str:
    out = []
    for ch in text:
        if ch in SPECIAL:
            out.append(SPECIAL[ch])
        elif ch in SYMBOLS:
            out.append(SYMBOLS[ch])
        else:
            out.append(ch)
    return "".join(out)


def escape(text: str) -> str:
    """One line of Markdown text as LaTeX: ```code``` as \\texttt (its hyphens kept apart: ``--`` is no en-dash),
    ``**bold**`` as \\textbf, the rest escaped."""
    out, pos = [], 0
    for m in INLINE.finditer(text):
        out.append(_plain(text[pos:m.start()]))
        out.append(r"\texttt{" + _plain(m.group(1)).replace("-", "-{}") + "}" if m.group(1) is not None
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
