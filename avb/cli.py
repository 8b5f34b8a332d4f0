"""Command line: ``avb <command>``; ``avb --help`` lists the commands, ``avb <command> --help`` their options.

Settings come from JSON files (``--config FILE``, as the pipeline's local rules write them from tracked params);
a file is checked against the schema's definition of its section (``avb.config.section``), whose defaults fill the
keys it leaves out. Only a training run's config may be changed on the command line, by hand:
``avb train CONFIG train.steps=100 model.arch=conv0 --device cuda:1`` (values read as YAML, each key and value
checked against the schema: ``avb.config.assign``); the pipeline never does so.

The commands live in ``avb.commands``, one module per part of the pipeline; this module builds the parser from them,
runs the chosen handler and turns any error into one line (``AVB_DEBUG=1``: the traceback).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from .commands import mnist, presets, publish, schools, toy

# in `avb --help` order
COMMAND_GROUPS = (mnist, schools, toy, publish, presets)


class _CommandsFormatter(argparse.HelpFormatter):
    """``avb --help``: one line per command (the descriptions start after the longest command name)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=24, width=120)
        self._action_max_length = 18  # "    check-config" + 2: argparse does not count the commands' own names


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("avb-replication")
    except PackageNotFoundError:  # a checkout on PYTHONPATH, not installed
        return "unknown (not installed)"


def parser() -> argparse.ArgumentParser:
    """``avb``'s parser: every group's commands, each with its handler as ``func``."""
    p = argparse.ArgumentParser(
        prog="avb", description="Adversarial Variational Bayes, replicated: the jobs of the Snakemake pipeline "
                                "(each reads its settings from a JSON file: --config).",
        epilog="`avb <command> --help` lists a command's options.",
        formatter_class=_CommandsFormatter)
    p.add_argument("--version", action="version", version=f"avb-replication {_version()}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="<command>", title="commands")
    for group in COMMAND_GROUPS:
        group.add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if getattr(a, "require_gpu", False):
        from .device import ENV_REQUIRE_GPU
        os.environ[ENV_REQUIRE_GPU] = "1"
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    try:
        return a.func(a) or 0
    except Exception as err:  # one clear line for users; the traceback stays available with AVB_DEBUG=1
        if os.environ.get("AVB_DEBUG"):
            raise
        print(f"avb {a.cmd}: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
