"""Logging set-up for the command line: rich handler on rank 0, warnings only on other ranks."""

from __future__ import annotations

import logging

from weakseg.engine import dist


def setup_logging(verbose: bool = False) -> None:
    from rich.logging import RichHandler

    level = logging.DEBUG if verbose else logging.INFO
    if not dist.is_main():
        level = logging.WARNING
    logging.basicConfig(
        level=level, format="%(message)s", datefmt="[%X]", handlers=[RichHandler(show_path=False)], force=True
    )
