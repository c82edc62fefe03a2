"""The CPU kernels' disk cache: keyed on pktnin/layout.py through numba's internal FunctionCache, and numba's
default cache when that class is missing or refuses (the kernels must still compile and run)."""

from __future__ import annotations

import numba.core.caching
import numba.core.config
import numpy as np
import pytest
from numba import njit

from pktnin.kernels import cpu


def add_one(x):
    return x + 1


def test_kernels_use_the_layout_keyed_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(numba.core.config, "CACHE_DIR", str(tmp_path))
    assert cpu.LAYOUT_KEYED_CACHE is not None  # the numba installed here still has the class
    kernel = cpu.cached(njit(add_one))
    assert isinstance(kernel._cache, cpu.LAYOUT_KEYED_CACHE)
    assert kernel(np.int64(1)) == 2
    assert list(tmp_path.rglob("*.nbi"))  # an index was written


def test_missing_internal_class_gives_no_keyed_cache(monkeypatch):
    monkeypatch.delattr(numba.core.caching, "FunctionCache")
    assert cpu.layout_keyed_cache_class() is None
    monkeypatch.undo()
    monkeypatch.setattr(numba.core.caching, "FunctionCache", type("FunctionCache", (), {}))  # no _index_key
    assert cpu.layout_keyed_cache_class() is None


@pytest.mark.parametrize("broken", ["absent", "raises"])
def test_falls_back_to_numbas_default_cache(broken, tmp_path, monkeypatch):
    monkeypatch.setattr(numba.core.config, "CACHE_DIR", str(tmp_path))  # read when a cache is made

    class Refusing:
        def __init__(self, py_func):
            raise TypeError("FunctionCache.__init__() takes 3 positional arguments but 2 were given")

    kernel = cpu.cached(njit(add_one), None if broken == "absent" else Refusing)
    assert type(kernel._cache) is numba.core.caching.FunctionCache  # what njit(cache=True) sets up
    assert kernel(np.int64(41)) == 42
    assert list(tmp_path.rglob("*.nbi"))
