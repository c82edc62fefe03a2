"""The paper's networks as plain layer lists, with analytic parameter and FLOP counts (no TensorFlow here).

Every network reads the normalized 1500-byte row; a preset says which bytes (`start:stop`) it looks at and
lists its layers. `pktnin.trainer.models` turns the same lists into Keras models, so the counts below and
`keras.Model.count_params()` describe the same graph (tests/test_models.py checks both, and checks the FLOPs
against TensorFlow's own profiler).

FLOP convention (the one TensorFlow's profiler uses for the inference graph at batch 1; the paper's models
were built with TensorFlow and this convention reproduces its CNN figures, see docs/models.md):
- convolution and dense layers: 2 FLOPs per multiply-accumulate, plus 1 per output for the bias add;
- max pooling: `size` FLOPs per output element; global average pooling: 1 per input element;
- softmax: 5 per class; alpha fusion: 3 per class (two scalings and one add);
- ReLU, dropout (inactive at inference), slicing, reshapes: 0.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

from pktnin.errors import OptionError
from pktnin.layout import BODY_LEN, HEADER_LEN, ROW_LEN

PAPER_CLASSES = 12  # Table 5 and Tables 7-8 count the 12-class traffic task (Task B)


@dataclass(frozen=True)
class Conv:
    """Conv1D over the byte axis, 'same' padding."""

    filters: int
    kernel: int
    stride: int = 1
    relu: bool = True


@dataclass(frozen=True)
class MaxPool:
    """MaxPooling1D, 'same' padding (the reading that reproduces the paper's CNN parameter counts)."""

    size: int = 3
    stride: int = 3


@dataclass(frozen=True)
class Flatten:
    pass


@dataclass(frozen=True)
class Dense:
    units: int
    relu: bool = True


@dataclass(frozen=True)
class GlobalAvgPool:
    pass


@dataclass(frozen=True)
class Dropout:
    rate: float


@dataclass(frozen=True)
class Softmax:
    pass


Layer = Conv | MaxPool | Flatten | Dense | GlobalAvgPool | Dropout | Softmax


@dataclass(frozen=True)
class PaperFigures:
    """What the paper reports for a network (12 classes): Table 5 or Tables 7-8, and test-set macro-F1."""

    params: float
    flops: float
    source: str
    f1_task_a: float
    f1_task_b: float


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    start: int  # first row byte this network reads
    stop: int  # one past the last
    paper: PaperFigures | None  # None: a preset beyond the paper
    layers: Callable[[int, float, float], list] | None  # (num_classes, width, dropout) -> layer list
    branches: tuple[str, ...] = ()  # a fusion (Eq. 3): the two branch presets, header first

    @property
    def input_bytes(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Counts:
    params: int
    flops: int


def scaled(n: int, width: float) -> int:
    """Filter or unit count at a width factor (the class count is never scaled)."""
    return max(1, round(n * width))


# Table 3 / Table 4: kernel size W1 and stride H1 of the five modules.
MODULE_KERNELS = ((7, 3), (5, 1), (3, 1), (3, 1), (3, 1))


def _dense_head(units: tuple[int, ...], num_classes: int, width: float, dropout: float) -> list:
    """Flatten, hidden Dense layers (each followed by Dropout), then the class layer and softmax."""
    out: list = [Flatten()]
    for n in units:
        out += [Dense(scaled(n, width)), Dropout(dropout)]
    return out + [Dense(num_classes, relu=False), Softmax()]


def _cnn(filters: tuple[int, ...], dense: tuple[int, ...]):
    def layers(num_classes: int, width: float, dropout: float) -> list:
        out: list = []
        for (kernel, stride), n in zip(MODULE_KERNELS, filters):
            out += [Conv(scaled(n, width), kernel, stride), MaxPool(3, 3)]
        return out + _dense_head(dense, num_classes, width, dropout)

    return layers


def _nin(filters: tuple[int, ...], last_1x1: tuple[int, ...]):
    """Modules 1-4: Conv(W1,H1,N), two 1x1 Conv(N), MaxPool(3,3). Module 5: Conv(3,1,N5), 1x1 convs, 1x1 to classes."""

    def layers(num_classes: int, width: float, dropout: float) -> list:
        out: list = []
        for (kernel, stride), paper_n in zip(MODULE_KERNELS[:4], filters[:4]):
            n = scaled(paper_n, width)
            out += [Conv(n, kernel, stride), Conv(n, 1), Conv(n, 1), MaxPool(3, 3), Dropout(dropout)]
        kernel, stride = MODULE_KERNELS[4]
        out.append(Conv(scaled(filters[4], width), kernel, stride))
        out += [Conv(scaled(n, width), 1) for n in last_1x1]
        return out + [Conv(num_classes, 1, relu=False), GlobalAvgPool(), Softmax()]

    return layers


def _nin1(num_classes: int, width: float, dropout: float) -> list:
    """Header branch: two MLP-conv modules (W1=3, H1=2, N=200), max pooling (3, 2) after the second only."""
    n = scaled(200, width)
    out: list = []
    for module in (1, 2):
        out += [Conv(n, 3, 2), Conv(n, 1), Conv(n, 1)]
        if module == 2:
            out.append(MaxPool(3, 2))
        out.append(Dropout(dropout))
    return out + _dense_head((1024, 64), num_classes, width, dropout)


# CNN_DeepPacket: the paper's text (two convolutions of 200 filters, kernels 5 and 4, both stride 5; Dense 1024,
# 512, 64) gives 1.301e7 parameters and 4.56e7 FLOPs, not 1.218e7 / 1.095e8. DEEPPACKET_READING is the reading
# that deeppacket_search() ranks first (closest to both figures); docs/models.md describes the search.
DEEPPACKET_FILTERS = 200
DEEPPACKET_KERNELS = (5, 4)
DEEPPACKET_DENSE = (1024, 512, 64)
DEEPPACKET_STRIDE_CHOICES = (1, 2, 3, 4, 5)
DEEPPACKET_POOL_CHOICES = (None, (2, 2), (3, 2), (3, 3), (4, 4), (5, 5))
DEEPPACKET_READING = {"strides": (1, 3), "pools": ((3, 2), (5, 5))}


def deeppacket_layers(strides, pools, num_classes: int, width: float, dropout: float) -> list:
    out: list = []
    for kernel, stride, pool in zip(DEEPPACKET_KERNELS, strides, pools):
        out.append(Conv(scaled(DEEPPACKET_FILTERS, width), kernel, stride))
        if pool is not None:
            out.append(MaxPool(*pool))
    return out + _dense_head(DEEPPACKET_DENSE, num_classes, width, dropout)


def _deeppacket(num_classes: int, width: float, dropout: float) -> list:
    return deeppacket_layers(DEEPPACKET_READING["strides"], DEEPPACKET_READING["pools"], num_classes, width, dropout)


PARALLEL_PRESET = "nin_parallel"  # the fusion of nin1 and nin2 (paper Eq. 3)
# Beyond the paper: NIN_small's layers on the 1460 body bytes, a body branch at 1/6 of NIN2's FLOPs, and its
# fusion with NIN1 like the paper's Eq. 3 (NIN2 trains at ~1 hour an epoch on 200 k rows on two cores).
SMALL_BODY_PRESET = "nin_small_body"
PARALLEL_SMALL_PRESET = "nin_parallel_small"

# fmt: off
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("cnn_large", "CNN_large", 0, ROW_LEN, PaperFigures(5.755e6, 1.119e8, "Table 5", 0.970, 0.973),
               _cnn((64, 256, 384, 512, 1024), (1024, 64))),
        # The text says CNN_small keeps both dense layers; the paper's count is only reached without Dense 1024.
        Preset("cnn_small", "CNN_small", 0, ROW_LEN, PaperFigures(6.267e5, 1.593e7, "Table 5", 0.961, 0.969),
               _cnn((32, 64, 128, 256, 512), (64,))),
        Preset("nin_large", "NIN_large", 0, ROW_LEN, PaperFigures(4.034e6, 2.177e8, "Table 5", 0.974, 0.979),
               _nin((64, 256, 384, 512, 1024), (512,))),
        Preset("nin_small", "NIN_small", 0, ROW_LEN, PaperFigures(1.099e6, 3.468e7, "Table 5", 0.969, 0.974),
               _nin((32, 64, 128, 256, 512), (512, 256))),
        Preset("cnn_deeppacket", "CNN_DeepPacket", 0, ROW_LEN,
               PaperFigures(1.218e7, 1.095e8, "Table 5", 0.965, 0.972), _deeppacket),
        Preset("nin1", "NIN1 (header)", 0, HEADER_LEN, PaperFigures(2.033e5, 9.431e6, "Tables 7-8", 0.985, 0.982),
               _nin1),
        Preset("nin2", "NIN2 (body)", HEADER_LEN, HEADER_LEN + BODY_LEN,
               PaperFigures(4.034e6, 2.144e8, "Tables 7-8", 0.585, 0.673), _nin((64, 256, 384, 512, 1024), (512,))),
        Preset(PARALLEL_PRESET, "NIN_parallel", 0, ROW_LEN,
               PaperFigures(4.237e6, 2.238e8, "Tables 7-8", 0.985, 0.983), None, branches=("nin1", "nin2")),
        Preset(SMALL_BODY_PRESET, "NIN_small (body)", HEADER_LEN, HEADER_LEN + BODY_LEN, None,
               _nin((32, 64, 128, 256, 512), (512, 256))),
        Preset(PARALLEL_SMALL_PRESET, "NIN1 + NIN_small (body)", 0, ROW_LEN, None, None,
               branches=("nin1", SMALL_BODY_PRESET)),
    )
}
# fmt: on


def fusion_of(header: str, body: str) -> str:
    """The fused preset whose branches are `header` and `body`."""
    for preset in PRESETS.values():
        if preset.branches == (header, body):
            return preset.name
    raise OptionError(f"no preset fuses {header!r} and {body!r}")


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise OptionError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def check_build_args(num_classes: int, width: float, dropout: float) -> None:
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout rate must be in [0, 1), got {dropout!r}")


def preset_layers(name: str, num_classes: int, width: float = 1.0, dropout: float = 0.1) -> list:
    """The layer list of a single-branch preset (nin_parallel has none: see its `branches`)."""
    preset = get_preset(name)
    if preset.layers is None:
        raise ValueError(f"{name} is a fusion of {' and '.join(preset.branches)}; it has no layer list of its own")
    check_build_args(num_classes, width, dropout)
    return preset.layers(num_classes, width, dropout)


def same_length(length: int, stride: int) -> int:
    """Output length of a 'same'-padded convolution or pooling."""
    return -(-length // stride)


def count_layers(layers: list, input_len: int) -> Counts:
    """Parameters and FLOPs (convention in the module docstring) of a layer list on `input_len` bytes."""
    length, channels = input_len, 1  # a sequence of `length` positions with `channels` features each
    flat = None  # feature count once flattened / pooled away
    params = flops = 0
    for layer in layers:
        if isinstance(layer, Conv):
            if flat is not None:
                raise ValueError("Conv after Flatten/GlobalAvgPool")
            length = same_length(length, layer.stride)
            params += layer.kernel * channels * layer.filters + layer.filters
            flops += 2 * length * layer.kernel * channels * layer.filters + length * layer.filters
            channels = layer.filters
        elif isinstance(layer, MaxPool):
            length = same_length(length, layer.stride)
            flops += layer.size * length * channels
        elif isinstance(layer, Flatten):
            flat = length * channels
        elif isinstance(layer, GlobalAvgPool):
            flops += length * channels
            flat = channels
        elif isinstance(layer, Dense):
            if flat is None:
                raise ValueError("Dense before Flatten/GlobalAvgPool")
            params += flat * layer.units + layer.units
            flops += 2 * flat * layer.units + layer.units
            flat = layer.units
        elif isinstance(layer, Softmax):
            flops += 5 * (flat if flat is not None else length * channels)
        elif isinstance(layer, Dropout):
            pass
        else:
            raise TypeError(f"unknown layer spec {layer!r}")
    return Counts(params, flops)


def count(name: str, num_classes: int, width: float = 1.0) -> Counts:
    """Analytic parameters and FLOPs per packet of a preset (a fusion: its two branches + the fusion)."""
    preset = get_preset(name)
    if preset.branches:
        parts = [count(branch, num_classes, width) for branch in preset.branches]
        return Counts(sum(p.params for p in parts), sum(p.flops for p in parts) + 3 * num_classes)
    return count_layers(preset_layers(name, num_classes, width), preset.input_bytes)


def summary(num_classes: int) -> list[dict]:
    """One dict per preset: counts at `num_classes` and the paper's figures (which are for 12 classes)."""
    rows = []
    for preset in PRESETS.values():
        counts = count(preset.name, num_classes)
        at_paper = count(preset.name, PAPER_CLASSES)
        paper = preset.paper
        rows.append(
            {
                "preset": preset.name,
                "title": preset.title,
                "input_start": preset.start,
                "input_bytes": preset.input_bytes,
                "classes": num_classes,
                "params": counts.params,
                "flops": counts.flops,
                "params_12": at_paper.params,
                "flops_12": at_paper.flops,
                "paper_params": paper.params if paper else None,
                "paper_flops": paper.flops if paper else None,
                "paper_source": paper.source if paper else "beyond the paper",
                "paper_f1_task_a": paper.f1_task_a if paper else None,
                "paper_f1_task_b": paper.f1_task_b if paper else None,
            }
        )
    return rows


def deeppacket_search(num_classes: int = PAPER_CLASSES) -> list[dict]:
    """Every CNN_DeepPacket reading in the grid, closest to the paper first.

    Fixed by the text: two Conv1D of 200 filters with kernels 5 then 4, Dense 1024, 512, 64, 'same' padding.
    Varied: the stride of each convolution (1-5) and an optional max pooling after each one. Ranked by the
    larger of the two relative errors (parameters, FLOPs), then by their root sum of squares; ties keep grid
    order (smaller strides first, no pooling first).
    """
    target = PRESETS["cnn_deeppacket"].paper
    assert target is not None
    found: list[dict] = []
    for s1, s2, p1, p2 in itertools.product(
        DEEPPACKET_STRIDE_CHOICES, DEEPPACKET_STRIDE_CHOICES, DEEPPACKET_POOL_CHOICES, DEEPPACKET_POOL_CHOICES
    ):
        counts = count_layers(deeppacket_layers((s1, s2), (p1, p2), num_classes, 1.0, 0.0), ROW_LEN)
        params_err = counts.params / target.params - 1
        flops_err = counts.flops / target.flops - 1
        found.append(
            {
                "strides": (s1, s2),
                "pools": (p1, p2),
                "params": counts.params,
                "flops": counts.flops,
                "params_err": params_err,
                "flops_err": flops_err,
                "max_err": max(abs(params_err), abs(flops_err)),
                "rss_err": math.hypot(params_err, flops_err),
            }
        )
    found.sort(key=lambda r: (round(r["max_err"], 9), round(r["rss_err"], 9)))  # stable: ties keep grid order
    return found
