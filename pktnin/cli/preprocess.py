"""`pktnin preprocess`: captures -> an .npz of 1500-byte rows and their metadata (pktnin.rowfile)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List

import typer

from pktnin.cli.console import console, file_progress, print_file_reports
from pktnin.cli.errors import check_inputs_read, exit_codes
from pktnin.cli.options import Mask, QuietOption, SummaryOption, check_summary_path, write_summary


def preprocess(
    paths: Annotated[
        List[Path],
        typer.Argument(
            metavar="PATH", help="Capture files and/or directories (walked recursively).", show_default=False
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .npz file (written atomically).")],
    keep_dns: Annotated[bool, typer.Option("--keep-dns", help="Keep packets to or from port 53.")] = False,
    mask: Annotated[Mask, typer.Option("--mask", help="Masking profile.")] = "paper",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output file.")] = False,
    quiet: QuietOption = False,
    summary: SummaryOption = None,
) -> None:
    """Turn captures into the paper's 1500-byte rows (uint8) with per-packet metadata.

    Keys: x uint8 [N,1500], file_id int32 (index into files), files str, frame int64, ts_ns, ip_version, proto,
    src_addr/dst_addr uint8 [N,16], src_port, dst_port, vlan, flow_key, layout_version.
    """
    from pktnin.packets import find_captures, named_captures, total_skips
    from pktnin.rowfile import PrepOptions, check_row_file_target, write_row_file

    with exit_codes():
        opts = PrepOptions(mask=mask, keep_dns=keep_dns)
        check_row_file_target(out, force)
        files = find_captures(paths)
        check_summary_path(summary)
    with exit_codes(setup=False):
        with file_progress(len(files), "preprocess", enabled=progress and not quiet) as bar:
            result = write_row_file(files, out, opts, progress=bar, named=named_captures(files, paths))

    skips = total_skips(result.reports)
    write_summary(
        summary,
        {
            "files": len(files),
            "records": sum(r.records for r in result.reports),
            "rows": result.rows,
            "skipped_packets": skips,
            "files_with_errors": [
                {"file": str(r.path), "status": r.status, "errors": list(r.errors)} for r in result.reports if r.errors
            ],
            "out": str(out),
        },
    )
    if not quiet:
        print_file_reports(result.reports, skips, full_list="--summary")
        console.print(f"{result.rows:,} rows from {len(files)} files -> {out}")
    check_inputs_read(result.reports)


def register(app: typer.Typer) -> None:
    app.command("preprocess")(preprocess)
