"""What every test file shares: where the capture corpora are, and the `corpus` marker on the tests that use them.

The corpus is $PKTNIN_CORPUS, else shared/corpus in the repository's folder or any folder above it; the
extension corpus's labels are in shared/corpus-ext beside it and its captures in $PKTNIN_CORPUS_EXT_PCAPS (else
its pcaps/ folder). Tests that take the `corpus` or `corpus_ext` fixture skip cleanly when they are absent and
are marked `corpus` (deselect them with -m "not corpus").
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CORPUS_FIXTURES = {"corpus", "corpus_pcaps", "corpus_ext"}


def find_shared(name: str) -> Path | None:
    for parent in Path(__file__).resolve().parents[1:]:
        if (parent / "shared" / name).is_dir():
            return parent / "shared" / name
    return None


def _corpus() -> Path | None:
    if os.environ.get("PKTNIN_CORPUS"):
        return Path(os.environ["PKTNIN_CORPUS"])
    return find_shared("corpus")


CORPUS = _corpus()
CORPUS_EXT = CORPUS.parent / "corpus-ext" if CORPUS is not None else None


@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Path:
    """PKTNIN_CACHE_DIR in the test's own folder: no engine timing or record index of another test is reused."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("PKTNIN_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The corpus folder (pcaps/, labels.csv, file_splits.csv, classes.json)."""
    if CORPUS is None or not (CORPUS / "labels.csv").is_file():
        pytest.skip("the shared capture corpus is not present")
    return CORPUS


@pytest.fixture(scope="session")
def corpus_pcaps(corpus: Path) -> Path:
    if not (corpus / "pcaps").is_dir():
        pytest.skip(f"no captures in {corpus / 'pcaps'}")
    return corpus / "pcaps"


@pytest.fixture(scope="session")
def corpus_ext(corpus: Path) -> tuple[Path, Path]:
    """(the extension's labels.csv, the folder of its captures)."""
    assert CORPUS_EXT is not None
    pcaps = Path(os.environ.get("PKTNIN_CORPUS_EXT_PCAPS", CORPUS_EXT / "pcaps"))
    if not (CORPUS_EXT / "labels.csv").is_file() or not pcaps.is_dir():
        pytest.skip(f"{CORPUS_EXT} labels or its captures ({pcaps}) not present")
    return CORPUS_EXT / "labels.csv", pcaps


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if CORPUS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.corpus)
