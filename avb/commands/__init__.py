"""The subcommands of ``avb`` (``avb.cli``), one module per part of the pipeline: ``mnist`` (train, evaluate,
convergence, report, figures), ``schools``, ``toy``, ``publish`` (paper, claims, readme) and ``presets``
(check-config, plan). Each module's ``add(sub)`` registers its parsers, each with its handler as ``func``: a handler
takes the parsed arguments, prints what the job made and returns the exit status (None: 0); ``common`` holds the
options and helpers the jobs share.
"""
