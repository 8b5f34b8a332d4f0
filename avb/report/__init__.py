"""Report code: what the experiments' result tables become on the page. Nothing here trains or evaluates.

* ``tables``: the MNIST summary and the Table 2 replica (mean ± 95 % CI over seeds beside the printed values), CSV,
  Markdown and LaTeX.
* ``figures``: samples, AIS-convergence / BDMC curves, Figure 7 and the latent interpolations (PNG, PDF).
* ``table1``: the toy's Table 1 replica beside the paper's printed Table 1.
* ``toy``: the toy summary table, its Markdown and the latent-space figure.
* ``schools``: the eight-schools summary (errors and divergences to the HMC gold standard), Markdown and figure.
* ``claims``: the paper's claims with a verdict each (replicated / not replicated / inconclusive), CSV and Markdown.
* ``paper``: ``paper/replication.md`` and ``paper/main.tex`` with their tables and figures.
* ``publish``: ``avb paper``: renders ``paper`` into a folder (latexmk where asked) and writes a stamp.
* ``latex``: Markdown tables and text as LaTeX (booktabs tabulars, escaping).
* ``readme``: the README's results block, written from a run and checked against it.
* ``provenance``: the record of each Snakemake invocation (commit, machine, command, wall time) and its table.
* ``published``: the paper's printed values (Table 1, Table 2, Figure 3), as printed.
"""
