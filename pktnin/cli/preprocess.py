"""`pktnin preprocess`: captures -> an .npz of 1500-byte rows and their metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List

import numpy as np
import typer

from pktnin.cli._console import console, failed_files_table, file_progress, skip_table
from pktnin.layout import LAYOUT_VERSION, ROW_LEN


def preprocess(
    paths: Annotated[List[Path], typer.Argument(help="Capture files and/or directories (walked recursively).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .npz file (written atomically).")],
    keep_dns: Annotated[bool, typer.Option("--keep-dns", help="Keep packets to or from port 53.")] = False,
    mask: Annotated[str, typer.Option("--mask", help="Masking profile: paper or strict.")] = "paper",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Turn captures into the paper's 1500-byte rows (uint8) with per-packet metadata.

    Keys: x uint8 [N,1500], file_id int32 (index into files), files str, frame int64, ts_ns, ip_version, proto,
    src_addr/dst_addr uint8 [N,16], src_port, dst_port, vlan, flow_key, layout_version.
    """
    from pktnin.atomic import atomic_path
    from pktnin.packets import find_captures, iter_packets, mask_code, total_skips
    from pktnin.schema import META_COLUMNS, concat_meta

    try:
        mask_code(mask)
        files = find_captures(paths)
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from None

    rows: list[np.ndarray] = []
    file_ids: list[np.ndarray] = []
    columns: dict[str, list[np.ndarray]] = {name: [] for name in META_COLUMNS}
    reports: list = []
    with file_progress(len(files), "preprocess", enabled=progress) as bar:
        done = 0
        for batch in iter_packets(files, mask=mask, keep_dns=keep_dns, reports=reports):
            while done < len(reports):  # files finished before this batch
                bar.file_done()
                done += 1
            rows.append(batch.rows)
            file_ids.append(np.full(len(batch), batch.file_index, dtype=np.int32))
            for name in META_COLUMNS:
                columns[name].append(batch.meta[name])
            bar.add_packets(len(batch))
        bar.file_done(len(reports) - done)

    def cat(parts: list[np.ndarray], dtype, shape=()) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros((0, *shape), dtype=dtype)

    arrays = {
        "x": cat(rows, np.uint8, (ROW_LEN,)),
        "file_id": cat(file_ids, np.int32),
        "files": np.array([str(f) for f in files], dtype=str),
        "layout_version": np.array(LAYOUT_VERSION),
    }
    for name in META_COLUMNS:
        arrays[name] = concat_meta(columns[name], name)
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)

    skips = total_skips(reports)
    if skips:
        console.print(skip_table(skips))
    failed = failed_files_table(reports)
    if failed is not None:
        console.print(failed)
    console.print(f"{arrays['x'].shape[0]:,} rows from {len(files)} files -> {out}")


def register(app: typer.Typer) -> None:
    app.command("preprocess")(preprocess)
