"""The collector settings the CLI applies before a pass (see `syncd.cli._tune_gc`)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from syncd import cli


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.usefixtures("restored_gc")
def test_start_up_objects_are_frozen_and_young_collections_are_rarer() -> None:
    gc.unfreeze()
    older = gc.get_threshold()[1:]
    cli._tune_gc()
    assert gc.get_freeze_count() > 1000  # modules and everything loaded so far
    assert gc.get_threshold() == (cli.GC_THRESHOLD, *older)
    assert cli.GC_THRESHOLD > 700  # CPython's default: the point is to collect less often
