"""``python -m training COMMAND``: the commands that produce and measure every bundled weight and figure."""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {"prepare": "prepare", "fit": "fit", "export": "export", "calibrate": "calibrate", "variant": "variant",
            "evaluate": "evaluate",
            "bench-preprocess": "bench_preprocess", "bench-memory": "bench_memory",
            "bench-synthetic": "bench_synthetic", "bench-cohort": "bench_cohort", "bench-speed": "bench_speed"}
"""Sub-command -> module of this package."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"training.{module_name}")
        p = sub.add_parser(name, help=module.__doc__.splitlines()[0], description=module.__doc__)
        module.add_arguments(p)
        p.set_defaults(func=module.main)
    args = parser.parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
