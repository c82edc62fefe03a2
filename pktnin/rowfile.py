"""The row file `pktnin preprocess` writes: one .npz of 1500-byte rows and their per-packet metadata.

Keys: x uint8 [N,1500], file_id int32 (index into files), files str, frame int64, ts_ns, ip_version, proto,
src_addr/dst_addr uint8 [N,16], src_port, dst_port, vlan, flow_key, layout_version.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pktnin.atomic import atomic_path
from pktnin.errors import OptionError
from pktnin.layout import LAYOUT_VERSION, ROW_LEN, mask_code
from pktnin.outdir import OutputNotWritableError, check_writable
from pktnin.packets import FileReport, iter_packets
from pktnin.schema import META_COLUMNS, concat_meta
from pktnin.stages import Progress
from pktnin.storage import Location


@dataclass(frozen=True)
class PrepOptions:
    """How captures become rows: the masking profile and whether DNS packets stay."""

    mask: str = "paper"
    keep_dns: bool = False

    def __post_init__(self) -> None:
        mask_code(self.mask)  # raises OptionError


@dataclass
class RowFileResult:
    out: Path
    rows: int
    reports: list[FileReport]


def check_row_file_target(out: str | os.PathLike, force: bool = False) -> None:
    """Raise OptionError before any work when `out` names a folder, or an existing file and not `force`."""
    target = Path(out)
    if target.is_dir():
        raise OptionError(f"--out {target} is a folder: name a file, e.g. {target / 'rows.npz'}")
    if target.exists() and not force:
        raise OptionError(f"--out {target} exists: choose another name, or --force to replace it")


def write_row_file(
    files: Sequence[Path],
    out: str | os.PathLike,
    opts: PrepOptions,
    progress: Progress | None = None,
    named: AbstractSet[Location] | None = None,
) -> RowFileResult:
    """Rows and metadata of every packet of `files` into `out` (.npz, written atomically).

    `progress` (optional) has add_packets(n) and file_done(n); bad files are skipped and reported; `named`: the
    files the user named (packets.iter_raw_batches).
    """
    out = Path(out)
    check_writable(out)  # before the work, not after it: a read-only or full disk fails now, in one line
    arrays, reports = row_arrays(files, opts, progress, named)
    save_row_file(arrays, out)
    return RowFileResult(out=out, rows=int(arrays["x"].shape[0]), reports=reports)


def row_arrays(
    files: Sequence[Path],
    opts: PrepOptions,
    progress: Progress | None = None,
    named: AbstractSet[Location] | None = None,
) -> tuple[dict[str, np.ndarray], list[FileReport]]:
    """The row file's arrays (keys above) for `files`, in memory, and one FileReport per file."""
    rows: list[np.ndarray] = []
    file_ids: list[np.ndarray] = []
    columns: dict[str, list[np.ndarray]] = {name: [] for name in META_COLUMNS}
    reports: list[FileReport] = []
    done = 0
    for batch in iter_packets(files, mask=opts.mask, keep_dns=opts.keep_dns, reports=reports, named=named):
        if progress is not None:
            while done < len(reports):  # files finished before this batch
                progress.file_done(1)
                done += 1
            progress.add_packets(len(batch))
        rows.append(batch.rows)
        file_ids.append(np.full(len(batch), batch.file_index, dtype=np.int32))
        for name in META_COLUMNS:
            columns[name].append(batch.meta[name])
    if progress is not None:
        progress.file_done(len(reports) - done)

    def cat(parts: list[np.ndarray], dtype: type, shape: tuple[int, ...] = ()) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros((0, *shape), dtype=dtype)

    arrays = {
        "x": cat(rows, np.uint8, (ROW_LEN,)),
        "file_id": cat(file_ids, np.int32),
        "files": np.array([str(f) for f in files], dtype=str),
        "layout_version": np.array(LAYOUT_VERSION),
    }
    for name in META_COLUMNS:
        arrays[name] = concat_meta(columns[name], name)
    return arrays, reports


def save_row_file(arrays: dict[str, np.ndarray], out: str | os.PathLike) -> Path:
    """Write the arrays to `out` (.npz) atomically; OutputNotWritableError when the disk cannot take them."""
    out = Path(out)
    check_writable(out, need_bytes=sum(a.nbytes for a in arrays.values()))
    try:
        with atomic_path(out) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]  # numpy's stub mistakes the names for allow_pickle
    except OSError as exc:  # the temporary file is removed: nothing half-written is left
        raise OutputNotWritableError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out
