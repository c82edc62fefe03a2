"""What a scoring run is asked to do (ScoreOptions, checked when made) and what it did (ScoreResult)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pktnin.errors import OptionError
from pktnin.flow_decide import FlowParams
from pktnin.layout import LAYOUT_VERSION, mask_code
from pktnin.packets import FileReport
from pktnin.scoring.writers import FORMATS, format_for
from pktnin.storage import Location, as_path, is_uri
from pktnin.version import __version__

DEFAULT_UNIT_BYTES = 256 << 20
DEFAULT_UNIT_FILES = 1024

DECIDE_MODES = ("packet", "flow")


def _same(a: Location, b: Location) -> bool:
    if is_uri(a) or is_uri(b):
        return str(a) == str(b)
    return Path(a).resolve() == Path(b).resolve()


@dataclass
class ScoreOptions:
    out: Location  # a local path, or a URI (pktnin.storage)
    flows_out: Location | None = None
    fmt: str | None = None  # parquet or csv; None: from the suffix of `out` (scoring.writers.format_for)
    probs: bool = False
    resume: bool = False
    force: bool = False  # replace existing outputs and discard an earlier run's finished files
    report: Location | None = None  # per-file report, .json or .csv (written by the caller: score.outputs)
    keep_dns: bool = False
    mask: str = "paper"
    batch: int = 256
    # numba threads for read+prep. One by default: on the CPU the engine is the bottleneck and needs the cores,
    # and idle OpenMP workers spin, starving the engine and the writer. None: numba's default (all cores).
    prep_threads: int | None = 1
    model_id: str = ""  # identifies the model's content (hash), for the manifest
    model_name: str = ""  # the model's file name, for the outputs' metadata
    engine: str = ""  # what runs the model (engine.EngineChoice.label), for the outputs' metadata
    agreement: str = ""  # its recorded agreement with float32 per check set (JSON), for the outputs' metadata
    # Units of work (scoring.units): files larger than unit_bytes are cut into byte ranges of about that size,
    # smaller ones grouped up to that size or unit_files files. A unit is what a kill can lose, per executor slot.
    unit_bytes: int = DEFAULT_UNIT_BYTES
    unit_files: int = DEFAULT_UNIT_FILES
    # packet: every row through the model (the paper); flow: the first flow.packets rows of each flow
    # (pktnin.flow_decide), the flow's decision on all its rows.
    decide: str = "packet"
    flow: FlowParams = field(default_factory=FlowParams)

    def __post_init__(self) -> None:
        self.out = as_path(self.out)
        self.fmt = format_for(self.out, self.fmt)
        if self.report is not None:
            self.report = as_path(self.report)
        if self.flows_out is not None:
            self.flows_out = as_path(self.flows_out)
            if _same(self.flows_out, self.out):
                raise OptionError(f"the flows output must differ from the packet output ({self.out})")
        if self.fmt not in FORMATS:
            raise OptionError(f"unknown output format {self.fmt!r}; choose from {', '.join(FORMATS)}")
        mask_code(self.mask)  # raises OptionError
        if self.decide not in DECIDE_MODES:
            raise OptionError(f"decide must be one of {', '.join(DECIDE_MODES)}, got {self.decide!r}")
        for name in ("batch", "prep_threads", "unit_bytes", "unit_files"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise OptionError(f"{name} must be at least 1, got {value!r}")

    def metadata(self, classes: list[str]) -> dict[str, str]:
        """Key-value metadata of the Parquet outputs: what produced the rows."""
        model_hash, backend, precision = (self.model_id.split(":") + ["", ""])[:3]
        return {
            "pktnin.version": __version__,
            "pktnin.layout_version": str(LAYOUT_VERSION),
            "pktnin.model": self.model_name,
            "pktnin.model_sha256": model_hash,
            "pktnin.backend": backend,
            "pktnin.precision": precision,
            "pktnin.engine": self.engine,
            "pktnin.agreement": self.agreement,
            "pktnin.classes": ",".join(classes),
            "pktnin.mask": self.mask,
            "pktnin.keep_dns": str(self.keep_dns).lower(),
            "pktnin.decide": self.decide,
            # flow: rows of each flow the decision used at most (K); packet: 1
            "pktnin.decide_packets": str(self.flow.packets) if self.decide == "flow" else "1",
            "pktnin.frame": "0-based index of the record in its file, skipped records counted",
            "pktnin.flow_packets": "scored packets only: packets skipped by the layout (dns, no-payload, ...) "
            "are not counted",
        }

    def settings(self, classes: list[str]) -> dict:
        """What makes two runs' parts interchangeable. Not the unit sizes: a unit's id names its files (and byte
        ranges), so a unit of the same pieces is the same work."""
        return {
            "model": self.model_id,
            "classes": list(classes),
            "mask": self.mask,
            "keep_dns": self.keep_dns,
            "format": self.fmt,
            "probs": self.probs,
            "flows": self.flows_out is not None,
            **({"decide": "flow", "flow": asdict(self.flow)} if self.decide == "flow" else {}),
        }


@dataclass(frozen=True)
class ChainSettings:
    """What the stages of a unit's chain (scoring.chain) need to know of a run's options."""

    mask: str = "paper"
    keep_dns: bool = False
    batch: int = 256
    prep_threads: int | None = 1  # numba threads of the CPU prep; None: numba's default
    decide: str = "packet"  # flow: the engine stage is scoring.flow_stage's
    flow: FlowParams = FlowParams()

    @classmethod
    def of(cls, opts: ScoreOptions) -> ChainSettings:
        return cls(opts.mask, opts.keep_dns, opts.batch, opts.prep_threads, opts.decide, opts.flow)


@dataclass
class ScoreResult:
    files: list[Location]
    reports: list[FileReport]
    classes: list[str]
    label_counts: np.ndarray  # packets per class, all files (resumed ones included)
    packets: int  # packets scored in this run
    records: int  # packet records read in this run
    seconds: float  # wall time of this run's scoring (not counting the final assembly)
    resumed: int  # files taken from an earlier run
    rows_written: int
    flows_written: int | None
    outputs: list[Location] = field(default_factory=list)
    units: int = 0  # units of work of the run (scoring.units), those of an earlier run included
    nodes: dict[str, int] = field(default_factory=dict)  # units scored in this run per Ray node id (Ray only)

    @property
    def packets_per_s(self) -> float:
        return self.packets / self.seconds if self.seconds > 0 else 0.0
