"""service/gc_freeze.py: the start-up heap is frozen out of full collections, and later garbage is still collected."""

from __future__ import annotations

import gc

import pytest

from service.gc_freeze import freeze_startup_heap


@pytest.fixture
def unfrozen():
    yield
    gc.unfreeze()


def test_startup_objects_are_frozen_and_new_garbage_still_collected(unfrozen):
    before = []  # alive at start-up (and tracked by the collector): frozen
    frozen = freeze_startup_heap()
    assert frozen == gc.get_freeze_count() > 0
    assert not any(o is before for o in gc.get_objects())  # a full collection no longer walks it

    class Cycle:
        pass

    a, b = Cycle(), Cycle()
    a.other, b.other = b, a  # a reference cycle made after the freeze: only the collector frees it
    del a, b
    assert gc.collect() >= 2
