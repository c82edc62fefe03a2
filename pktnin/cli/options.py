"""Options that several commands share, spelled once: the model (a file or a bundled model's name), --quiet,
--summary FILE.json and -v for TensorFlow's logs."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

MODEL_HELP = (
    "A bundled model by name (trees_first_flow8_rf_port_names, nin_flow_port, nin_parallel_small_port, nin1_port: see `pktnin models`) "
    "or a model file (.onnx, .keras checkpoint, .plan engine). Default: trees_first_flow8_rf_port_names."
)

# The values an option takes, as Literal types so that --help lists them (`--mask <paper|strict>`) and typer
# refuses any other. Each equals the library's own tuple (tests/test_cli_conventions.py checks it).
Mask = Literal["paper", "strict"]  # layout.MASK_PROFILES
Backend = Literal["auto", "tensorrt", "onnxruntime", "openvino"]  # engine.runners.BACKENDS
CpuPrecision = Literal["auto", "fp32", "bf16", "int8"]  # engine.precision.PRECISIONS
OutputFormat = Literal["parquet", "csv"]  # score.writers.FORMATS
Executor = Literal["local", "ray"]  # distributed.run.EXECUTORS
Decide = Literal["packet", "flow"]  # scoring.options.DECIDE_MODES
Split = Literal["train", "val", "test"]  # dataset.format.SPLIT_NAMES
SplitMode = Literal["random", "by-file"]  # dataset.options.SPLIT_MODES
SourceKind = Literal["auto", "iscx", "class-dirs", "csv"]  # dataset.detect.SOURCE_KINDS
IscxTask = Literal["A", "B"]
ClassWeighting = Literal["none", "balanced", "file"]  # trainer.train.CLASS_WEIGHTING
Fit = Literal["train", "train+val"]  # trainer.train.FIT_SPLITS
Augmentation = Literal["none", "header-jitter"]  # trainer.augment.AUGMENTATIONS
TrainPrecision = Literal["float32", "mixed_bfloat16"]  # trainer.train.PRECISIONS
InputDtype = Literal["float32", "uint8"]  # engine.model_file.INPUT_DTYPES
QuantizeTarget = Literal["cpu", "tensorrt"]  # engine.quantize.TARGETS
TensorRTPrecision = Literal["fp32", "fp16", "int8"]  # engine.trt_build.PRECISIONS

ModelOption = Annotated[
    Optional[str], typer.Option("--model", "-m", metavar="NAME|FILE", help=MODEL_HELP, show_default=False)
]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="Print only warnings and errors (no progress bar, no tables).")
]
SummaryOption = Annotated[
    Optional[Path],
    typer.Option("--summary", metavar="FILE.json", help="Also write the run's summary as JSON to this file."),
]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="Show TensorFlow's start-up logs.")]


def write_summary(path: Path | None, summary: dict) -> None:
    """Write `summary` as JSON to `path` (atomically; never through a link or over another user's file); nothing
    when path is None."""
    if path is None:
        return
    from pktnin.atomic import atomic_path
    from pktnin.outdir import replace_own

    with atomic_path(path, replace=replace_own) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")


def check_summary_path(path: Path | None, force: bool | None = None) -> None:
    """Refuse a --summary path that cannot be written, before any work is done: a folder, a symbolic link,
    anything but a regular file of the user's, a folder that cannot take it; an existing file unless `force`
    (None: commands without --force replace it)."""
    from pktnin.errors import UsageError
    from pktnin.outdir import check_target

    if path is None:
        return
    scheme, colon_slash, _ = str(path).partition(":/")  # a URI: Path folds its "//"
    if colon_slash and scheme.isalnum():
        raise UsageError(f"--summary {path}: the summary is written to a local file only")
    if path.is_dir():
        raise UsageError(f"--summary {path}: is a directory")
    if not path.parent.is_dir():
        raise UsageError(f"--summary {path}: folder {path.parent} does not exist")
    check_target("--summary", path, force is None or force)


def silence_tensorflow(verbose: bool) -> None:
    """Import TensorFlow (and Keras) with their start-up logs (oneDNN, CUDA probing, CPU features) kept off the
    terminal, unless `verbose`.

    TensorFlow's C++ side writes those lines to file descriptor 2 before its log level is read, so
    TF_CPP_MIN_LOG_LEVEL alone does not stop them: the import runs with descriptor 2 pointed at a temporary file,
    whose text is shown only if the import fails.
    """
    if verbose or "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with tempfile.TemporaryFile() as held:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        try:
            import tensorflow as tf

            tf.get_logger().setLevel("ERROR")
            import keras  # noqa: F401 - its own import logs go to the same place
        except ImportError:
            pass  # the command reports the missing extra itself
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


DecideOption = Annotated[
    Optional[Decide],
    typer.Option(
        "--decide",
        help="packet: every packet through the model; flow: the first K packets of each flow, the flow's decision "
        "on all its packets (default: packet, flow for a flow model).",
        show_default=False,
    ),
]
FlowPacketsOption = Annotated[
    Optional[int],
    typer.Option(
        "--flow-packets",
        min=1,
        help="With --decide flow: packets of each flow the decision uses, K (default 4; a flow model's own K).",
        show_default=False,
    ),
]
