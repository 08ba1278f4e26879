"""``learngn presets``: the named settings, with what each is for."""
from __future__ import annotations

import argparse

from .options import print_presets


def add_parser(subparsers) -> argparse.ArgumentParser:
    return subparsers.add_parser("presets", help="list the presets (named settings) with descriptions",
                                 description="List the presets that --preset accepts, with descriptions.")


def run(args: argparse.Namespace) -> int:
    print_presets()
    return 0
