"""numba's on-disk cache, keyed on more source files than the cached function's own.

numba checks only the source file of a cached function, so a kernel that compiles in functions or constants of
another module (pktnin/layout.py, kernels/capture_state.py) would silently reuse stale machine code after that
module changed: a subclass of numba's FunctionCache adds those files' digests to the key. FunctionCache is
numba's internal class; where it is not there as expected, numba's default cache is used.
"""

from __future__ import annotations

import hashlib


def source_keyed_cache_class(*modules):
    """A FunctionCache subclass whose keys include the contents of `modules`' files; None where numba's internals
    or the files are not there as expected."""
    try:
        from numba.core.caching import FunctionCache

        digests = []
        for module in modules:
            with open(module.__file__, "rb") as fh:
                digests.append(hashlib.sha256(fh.read()).hexdigest())
    except (ImportError, OSError, TypeError):  # numba internals moved, or a module without a file on disk
        return None
    if not callable(getattr(FunctionCache, "_index_key", None)):
        return None

    class SourceKeyedCache(FunctionCache):
        def _index_key(self, sig, codegen):
            return (*super()._index_key(sig, codegen), *digests)

    return SourceKeyedCache


def cached(dispatcher, cache_class):
    """Enable the disk cache of a numba dispatcher with `cache_class` where it works, else numba's default cache
    (keyed on the function's own file only: after an edit of another module alone, clear __pycache__ or set
    NUMBA_CACHE_DIR to a fresh folder)."""
    if cache_class is not None:
        try:
            dispatcher._cache = cache_class(dispatcher.py_func)
            return dispatcher
        except Exception:  # noqa: BLE001 - any failure of numba's internal class: use its public switch
            pass
    dispatcher.enable_caching()
    return dispatcher
