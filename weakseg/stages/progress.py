"""Progress bars for the stage loops: tqdm on the main process only."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

from weakseg.engine import dist

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """``items`` with a progress bar on the main process (plain iteration elsewhere)."""
    return iter(tqdm(items, total=total, desc=desc, leave=False, dynamic_ncols=True, disable=not dist.is_main()))
