"""Static int8 quantization of a pktnin ONNX model into QDQ form (QuantizeLinear/DequantizeLinear pairs).

QDQ is the form ONNX Runtime fuses into int8 kernels (VNNI on x86) and the form TensorRT 10/11 consumes for
explicit int8, so one file serves both. Weights are quantized per output channel. Activation ranges come from
calibration rows sampled from a dataset's training split, stratified by class and then by capture file, so a
few large captures do not set every range. Which calibration method and which nodes stay in float32 (first
layers, classifier heads, the parallel model's fusion) is chosen by argmax agreement with the float32 model on
validation rows; that agreement is written into the model's metadata, where `--precision auto` reads it.

onnx and onnxruntime.quantization are imported inside the functions (onnx is in the test and train extras).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pktnin.engine.cache import file_sha256
from pktnin.engine.export import save_onnx
from pktnin.engine.graph_rewrite import simplify_conv1d
from pktnin.engine.model_file import (
    AGREEMENT_KEY,
    INPUT_NAME,
    PRECISION_KEY,
    PROVENANCE_KEY,
    QUANTIZATION_KEY,
    SELECTION_SET,
    agreement_json,
    agreement_record,
    agreement_rows,
    json_prop,
    model_precision,
    read_props,
    set_props,
)
from pktnin.engine.openvino_runner import OpenVinoRunner, cpu_has_bf16, openvino_available
from pktnin.engine.ort_runner import OnnxRuntimeRunner
from pktnin.engine.port_table import PORT_NODE_PREFIX
from pktnin.errors import OptionError

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
EXCLUDE_LEVELS = ("none", "edges", "edges+fusion")
# uint8 activations x int8 weights (U8S8) is the fast x86 form; symmetric int8 activations (zero point 0) are
# what TensorRT's explicit quantization accepts.
TARGETS = ("cpu", "tensorrt")
TARGET_AGREEMENT = 0.995
CALIBRATION_BATCH = 64


@dataclass
class Candidate:
    method: str
    exclude: str
    agreement: float = float("nan")
    max_prob_diff: float = float("nan")
    seconds: float = 0.0
    excluded_nodes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "method": self.method,
            "exclude": self.exclude,
            "excluded_nodes": len(self.excluded_nodes),
            "argmax_agreement": round(self.agreement, 6),
            "max_prob_diff": round(self.max_prob_diff, 6),
            "seconds": round(self.seconds, 1),
        }


# -- rows ----------------------------------------------------------------------------------------------------
def stratified_indices(
    indices: np.ndarray, labels: np.ndarray, files: np.ndarray | None, n: int, seed: int = 0
) -> np.ndarray:
    """Up to n of `indices`, spread evenly over classes and, within a class, round-robin over capture files.

    A class with fewer rows than its share gives the rest to the other classes. Returned sorted.
    """
    rng = np.random.default_rng(seed)
    indices = np.asarray(indices, dtype=np.int64)
    if n >= indices.size:
        return np.sort(indices)
    files = np.zeros(labels.shape[0], dtype=np.int64) if files is None else files
    # Per class: the rows of each file shuffled, then interleaved file by file (files in random order).
    queues: list[np.ndarray] = []
    for cls in np.unique(labels[indices]):
        of_class = indices[labels[indices] == cls]
        per_file = [
            rng.permutation(of_class[files[of_class] == f]) for f in rng.permutation(np.unique(files[of_class]))
        ]
        depth = max(len(p) for p in per_file)
        order = [p[k] for k in range(depth) for p in per_file if k < len(p)]
        queues.append(np.asarray(order, dtype=np.int64))
    chosen: list[np.ndarray] = []
    left = n
    remaining = sorted(queues, key=len)  # small classes first, so their unused share goes to the larger ones
    while remaining and left > 0:
        share = max(1, left // len(remaining))
        q = remaining.pop(0)
        take = q[: min(share, len(q), left)]
        chosen.append(take)
        left -= len(take)
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def check_split(model_path: str | os.PathLike) -> str:
    """The split whose rows check agreement with float32: validation, unless the model was refit on train+val
    (its provenance says so). Agreement needs no labels, but on rows a model trained on it is close to 1 and says
    nothing about the captures it will score; the test rows are then the unseen ones."""
    provenance = json_prop(read_props(model_path), PROVENANCE_KEY, {})
    return "test" if provenance.get("fit") == "train+val" else "val"


def dataset_rows(dataset, split: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(rows, their dataset indices): up to n rows of `split`, stratified by class and capture file."""
    idx = dataset.indices(split)
    if idx.size == 0:
        raise OptionError(f"{dataset.path}: the {split} split is empty")
    chosen = stratified_indices(idx, dataset.labels, dataset.file, n, seed)
    return np.ascontiguousarray(dataset.rows[chosen]), chosen


# -- graph ---------------------------------------------------------------------------------------------------
def _weighted_nodes(proto) -> list:
    return [node for node in proto.graph.node if node.op_type in ("Conv", "MatMul", "Gemm")]


def nodes_to_exclude(proto, level: str) -> list[str]:
    """Node names kept in float32 for an exclusion level.

    edges: the first weighted layer reached from the input along each branch, and each softmax with the nodes
    back to the last weighted layer before it (most sensitive: raw bytes in, logits out); +fusion: also every node after the first Softmax on the
    way to the output (the alpha-weighted sum of the branches' probabilities). At every level, the port branch of
    a port-fused model (its table of class probabilities, the key arithmetic and the fusion) stays float32: it
    costs next to nothing and a table quantized to 256 levels would move the fused probabilities.
    """
    if level not in EXCLUDE_LEVELS:
        raise OptionError(f"exclusion level must be one of {', '.join(EXCLUDE_LEVELS)}, got {level!r}")
    port_branch = [n.name for n in proto.graph.node if n.name.startswith(PORT_NODE_PREFIX)]
    if level == "none":
        return sorted(port_branch)
    graph = proto.graph
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    weighted = {id(n) for n in _weighted_nodes(proto)}
    excluded: list[str] = []

    def first_weighted_after(name: str, seen: set) -> None:
        for node in consumers.get(name, []):
            if id(node) in seen:
                continue
            seen.add(id(node))
            if id(node) in weighted:
                excluded.append(node.name)
                continue
            for out in node.output:
                first_weighted_after(out, seen)

    def last_weighted_before(name: str, seen: set) -> None:
        # Every node from the softmax back to the last weighted layer: quantizing the logits (or the pooled
        # maps that become them) to 256 levels flips close calls.
        node = producers.get(name)
        if node is None or id(node) in seen:
            return
        seen.add(id(node))
        excluded.append(node.name)
        if id(node) in weighted:
            return
        for inp in node.input:
            last_weighted_before(inp, seen)

    first_weighted_after(graph.input[0].name, set())
    softmaxes = [n for n in graph.node if n.op_type == "Softmax"]
    for sm in softmaxes:
        excluded.append(sm.name)
        last_weighted_before(sm.input[0], set())
    if level == "edges+fusion":
        on_output_path = set()
        stack = [graph.output[0].name]
        while stack:
            node = producers.get(stack.pop())
            if node is None or node.op_type == "Softmax" or node.name in on_output_path:
                continue
            on_output_path.add(node.name)
            stack.extend(node.input)
        excluded.extend(sorted(on_output_path))
    return sorted(set(excluded) | set(port_branch))


# -- quantization --------------------------------------------------------------------------------------------
def preprocess(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Conv1D layers kept 4-D with their biases folded (graph_rewrite.simplify_conv1d), then shape inference and ONNX Runtime's basic graph rewrites
    (constant folding, MatMul+Add into Gemm, ...), so fewer activations need their own quantization step and
    more of the graph fuses into int8 kernels."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    proto = onnx.load_model(str(src))
    simplify_conv1d(proto)  # a no-op on a model exported by this version (export does it)
    folded = Path(dst).with_name(Path(dst).stem + "-folded.onnx")
    onnx.save_model(proto, str(folded))
    quant_pre_process(str(folded), str(dst), skip_symbolic_shape=False, skip_onnx_shape=False)
    return Path(dst)


def quantize_qdq(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    calibration_rows: np.ndarray,
    method: str = "minmax",
    exclude: list[str] | None = None,
    target: str = "cpu",
) -> Path:
    """Write the static QDQ int8 model of src (already preprocessed) to dst; metadata is copied by the caller."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if method not in CALIBRATION_METHODS:
        raise OptionError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}")
    if target not in TARGETS:
        raise OptionError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    if calibration_rows.ndim != 2 or calibration_rows.dtype != np.uint8 or len(calibration_rows) == 0:
        raise OptionError("calibration rows must be a non-empty uint8 [n, 1500] array")

    # Equal batches: ONNX Runtime's histogram calibrators stack the batches' outputs into one array.
    whole = len(calibration_rows) // CALIBRATION_BATCH * CALIBRATION_BATCH
    calibration_rows = calibration_rows[: whole or len(calibration_rows)]

    class Rows(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(
                {INPUT_NAME: calibration_rows[i : i + CALIBRATION_BATCH]}
                for i in range(0, len(calibration_rows), CALIBRATION_BATCH)
            )

        def get_next(self):
            return next(self._batches, None)

    calibrate = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[method]
    extra: dict[str, bool | float] = {"CalibMovingAverage": False}
    if method == "percentile":
        extra["CalibPercentile"] = 99.999
    symmetric = target == "tensorrt"
    extra["ActivationSymmetric"] = symmetric
    extra["WeightSymmetric"] = True
    quantize_static(
        str(src),
        str(dst),
        Rows(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=calibrate,
        nodes_to_exclude=list(exclude or []),
        extra_options=extra,
        calibration_providers=["CPUExecutionProvider"],
    )
    return Path(dst)


def probabilities(model_path: str | os.PathLike, rows: np.ndarray, batch: int = 256) -> np.ndarray:
    """float32 probabilities of an ONNX model on uint8 rows (ONNX Runtime, CPU)."""
    with OnnxRuntimeRunner(model_path, max_batch=batch) as runner:
        return runner.predict(np.ascontiguousarray(rows))


def agreement(probs: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(argmax agreement, largest absolute probability difference) of probs against reference."""
    if probs.shape != reference.shape:
        raise OptionError(f"shapes differ: {probs.shape} vs {reference.shape}")
    return float((probs.argmax(1) == reference.argmax(1)).mean()), float(np.abs(probs - reference).max())


@dataclass
class QuantizeResult:
    path: Path
    chosen: Candidate
    candidates: list[Candidate]
    calibration_rows: int
    validation_rows: int
    reached_target: bool  # on the validation rows and every held-out check set
    checks: dict[str, dict[str, float]] = field(default_factory=dict)  # engine -> {check set: agreement}


def quantize_model(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    calibration_rows: np.ndarray,
    validation_rows: np.ndarray,
    methods: tuple[str, ...] = ("minmax", "percentile"),
    exclude_levels: tuple[str, ...] = EXCLUDE_LEVELS,
    target: str = "cpu",
    target_agreement: float = TARGET_AGREEMENT,
    provenance: dict | None = None,
    max_extra_excluded: int = 4,
    log=None,
    validation_split: str = "val",
    checks: dict[str, np.ndarray] | None = None,
) -> QuantizeResult:
    """Quantize src with every (exclusion level, method) in order until one agrees with float32 on at least
    target_agreement of the validation rows; the least-excluded such candidate wins (fewer float32 nodes run
    faster), the best-agreeing one when none reaches it. Writes dst atomically with the metadata of src plus
    pktnin.precision, pktnin.quantization and pktnin.agreement.

    `checks` are held-out check sets ({name: rows}) that took no part in the choice: the chosen model's engines
    (ONNX Runtime int8, and OpenVINO's when installed) are measured on them and on the validation rows (check set
    "selection") and recorded; the target counts as reached only when every held-out set reaches it too."""
    import onnx

    log = log or (lambda msg: None)
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"model {src} not found")
    source_props = read_props(src)
    if model_precision(source_props) != "fp32":
        raise OptionError(f"{src}: already quantized ({source_props[PRECISION_KEY]}); quantize the float32 model")
    reference = probabilities(src, validation_rows)
    candidates: list[Candidate] = []
    best: tuple[Candidate, bytes] | None = None
    with tempfile.TemporaryDirectory(prefix="pktnin-quantize-") as tmp:
        prepared = preprocess(src, Path(tmp) / "prepared.onnx")
        prepared_proto = onnx.load_model(str(prepared))
        tried: list[list[str]] = []
        for level in exclude_levels:
            excluded = nodes_to_exclude(prepared_proto, level)
            if excluded in tried:  # e.g. edges+fusion of a model without a fusion
                continue
            tried.append(excluded)
            for method in methods:
                cand = Candidate(method, level, excluded_nodes=excluded)
                start = time.perf_counter()
                out = quantize_qdq(
                    prepared, Path(tmp) / f"q-{level}-{method}.onnx", calibration_rows, method, excluded, target
                )
                cand.agreement, cand.max_prob_diff = agreement(probabilities(out, validation_rows), reference)
                cand.seconds = time.perf_counter() - start
                candidates.append(cand)
                log(f"{level:<13} {method:<10} argmax agreement {cand.agreement:.4f}  max|dp| {cand.max_prob_diff:.3f}")
                if best is None or cand.agreement > best[0].agreement:
                    best = (cand, out.read_bytes())
            assert best is not None, "no calibration method given"
            if best[0].agreement >= target_agreement:
                break
        assert best is not None, "no exclusion level given"
        if best[0].agreement < target_agreement and max_extra_excluded > 0:
            best = _exclude_sensitive(
                prepared,
                prepared_proto,
                Path(tmp),
                calibration_rows,
                validation_rows,
                reference,
                best,
                candidates,
                target,
                target_agreement,
                max_extra_excluded,
                log,
            )
    chosen, payload = best
    proto = onnx.load_model_from_string(payload)
    quant_meta = {
        "format": "qdq",
        "activations": "int8-symmetric" if target == "tensorrt" else "uint8",
        "weights": "int8-per-channel-symmetric",
        "target": target,
        "method": chosen.method,
        "exclude": chosen.exclude,
        "excluded_nodes": chosen.excluded_nodes,
        "calibration": {"rows": int(len(calibration_rows)), "split": "train", "stratified": "class,file"},
        "validation": {
            "rows": int(len(validation_rows)),
            "split": validation_split,
            "argmax_agreement": chosen.agreement,
            "max_prob_diff": chosen.max_prob_diff,
            "target_agreement": target_agreement,
        },
        "candidates": [c.summary() for c in candidates],
        "source": src.name,
        "source_sha256": file_sha256(src),
        "onnxruntime": __import__("onnxruntime").__version__,
        **({"data": provenance} if provenance else {}),
    }
    props = {k: v for k, v in source_props.items()}
    props[PRECISION_KEY] = "int8"
    props[QUANTIZATION_KEY] = json.dumps(quant_meta, sort_keys=True)
    props.pop(AGREEMENT_KEY, None)  # written by record_checks below, per engine and check set
    set_props(proto, props)
    proto.producer_name = "pktnin"
    path = save_onnx(proto, dst)
    measured = record_checks(src, path, {SELECTION_SET: validation_rows, **(checks or {})})
    held_out = {name: v for name, v in measured["onnxruntime:int8"].items() if name != SELECTION_SET}
    reached = chosen.agreement >= target_agreement and all(v >= target_agreement for v in held_out.values())
    return QuantizeResult(path, chosen, candidates, len(calibration_rows), len(validation_rows), reached, measured)


def _exclude_sensitive(
    prepared, proto, tmp: Path, calibration_rows, validation_rows, reference, best, candidates, target, goal, limit, log
):
    """Rank the weighted layers still quantized by the agreement of a model where only that layer is int8,
    then keep the worst ones in float32 one by one (with the best candidate's method) until `goal` is met."""
    chosen = best[0]
    all_nodes = [n.name for n in proto.graph.node]
    remaining = [n.name for n in _weighted_nodes(proto) if n.name not in chosen.excluded_nodes]
    sensitivity = []
    for name in remaining:
        alone = quantize_qdq(
            prepared, tmp / "alone.onnx", calibration_rows, chosen.method, [x for x in all_nodes if x != name], target
        )
        sensitivity.append((agreement(probabilities(alone, validation_rows), reference)[0], name))
    sensitivity.sort()
    excluded = list(chosen.excluded_nodes)
    for score, name in sensitivity[:limit]:
        excluded.append(name)
        cand = Candidate(
            chosen.method,
            f"{chosen.exclude}+{len(excluded) - len(chosen.excluded_nodes)}",
            excluded_nodes=sorted(excluded),
        )
        start = time.perf_counter()
        out = quantize_qdq(prepared, tmp / "greedy.onnx", calibration_rows, cand.method, cand.excluded_nodes, target)
        cand.agreement, cand.max_prob_diff = agreement(probabilities(out, validation_rows), reference)
        cand.seconds = time.perf_counter() - start
        candidates.append(cand)
        log(
            f"{cand.exclude:<13} {cand.method:<10} argmax agreement {cand.agreement:.4f}  max|dp| "
            f"{cand.max_prob_diff:.3f}  (kept {name} in float32; alone it agreed {score:.4f})"
        )
        if cand.agreement > best[0].agreement:
            best = (cand, out.read_bytes())
        if cand.agreement >= goal:
            break
    return best


def record_agreement(
    path: str | os.PathLike, results: dict[str, dict[str, float]], rows: dict[str, int] | None = None
) -> None:
    """Merge {"<backend>:<precision>": {check set: agreement}} (and {check set: rows}) into a quantized model's
    pktnin.agreement (rewritten atomically)."""
    import onnx

    proto = onnx.load_model(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    engines, counts = agreement_record(props), agreement_rows(props)
    for key, sets in results.items():
        engines.setdefault(key, {}).update({name: float(v) for name, v in sets.items()})
    counts.update(rows or {})
    set_props(proto, {AGREEMENT_KEY: agreement_json(engines, counts)})
    save_onnx(proto, path)


def is_quantized(path: str | os.PathLike) -> bool:
    """True for a model written by quantize_model (pktnin.precision = int8)."""
    return model_precision(read_props(path)) == "int8"


def check_tensorrt_qdq(path: str | os.PathLike) -> None:
    """Raise ValueError unless every QuantizeLinear of the model is int8 with zero point 0 (symmetric), the only
    activation quantization TensorRT's explicit int8 accepts."""
    import onnx
    from onnx import TensorProto, numpy_helper

    proto = onnx.load_model(str(path))
    inits = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        zero = inits.get(node.input[2]) if len(node.input) > 2 else None
        # Without a zero-point initializer the quantized type is uint8 (the operator's default).
        if zero is None or zero.data_type != TensorProto.INT8 or np.any(numpy_helper.to_array(zero) != 0):
            raise OptionError(
                f"{path}: node {node.name} does not quantize to int8 with zero point 0; TensorRT takes symmetric "
                "int8 only: make the model with `pktnin quantize --target tensorrt`"
            )


def check_engines(
    fp32_path: str | os.PathLike, int8_path: str | os.PathLike, sets: dict[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    """Argmax agreement with float32 (ONNX Runtime) on each check set, of ONNX Runtime int8 and, when OpenVINO is
    installed, of OpenVINO int8 and (where the CPU has bf16) OpenVINO bf16 of the float32 model:
    {"<backend>:<precision>": {check set: agreement}} (model_file.agreement_record)."""
    engines: list[tuple[str, str | os.PathLike, str]] = [("onnxruntime:int8", int8_path, "int8")]
    if openvino_available():
        engines.append(("openvino:int8", int8_path, "int8"))
        if cpu_has_bf16():
            engines.append(("openvino:bf16", fp32_path, "bf16"))
    results: dict[str, dict[str, float]] = {key: {} for key, _, _ in engines}
    for name, rows in sets.items():
        if len(rows) == 0:
            continue
        rows = np.ascontiguousarray(rows)
        reference = probabilities(fp32_path, rows)
        for key, path, precision in engines:
            if key.startswith("onnxruntime"):
                probs = probabilities(path, rows)
            else:
                with OpenVinoRunner(path, precision=precision) as runner:
                    probs = runner.predict(rows)
            results[key][name] = agreement(probs, reference)[0]
    return results


def record_checks(
    fp32_path: str | os.PathLike, int8_path: str | os.PathLike, sets: dict[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    """check_engines on every set, written into the int8 model's pktnin.agreement with the sets' row counts."""
    results = check_engines(fp32_path, int8_path, sets)
    record_agreement(int8_path, results, {name: int(len(rows)) for name, rows in sets.items() if len(rows)})
    return results


def check_indices(dataset, model_path: str | os.PathLike, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """(selection indices, held-out indices, split name) of the dataset rows for checking an int8 model.

    A model trained on train: validation rows choose the quantization, test rows are held out. A model refit on
    train+val: the test split's capture files are split in two halves, one choosing, the other held out, so no
    held-out capture was seen by training or by the choice."""
    if check_split(model_path) == "val":
        return dataset.indices("val"), dataset.indices("test"), "test"
    test = dataset.indices("test")
    if test.size == 0:
        raise OptionError(f"{dataset.path}: the test split is empty")
    files = dataset.file[test] if dataset.file is not None else test
    unique = np.unique(files)
    held = np.random.default_rng(seed).permutation(unique)[: max(1, unique.size // 2)]
    is_held = np.isin(files, held)
    return test[~is_held], test[is_held], "test"


def held_out_sets(
    dataset, indices: np.ndarray, split: str, rows_per_source: int, synthetic: dict[str, np.ndarray], seed: int = 0
) -> dict[str, np.ndarray]:
    """{check set: rows} no quantization choice saw: up to rows_per_source of `indices` per source of the dataset
    ("<split>:<source>", stratified by class and file) and the synthetic and odd rows given."""
    sets: dict[str, np.ndarray] = {}
    sources = dataset.meta.get("inputs") or []
    if dataset.source is None or not sources:
        groups = {"all": indices}
    else:
        groups = {
            _source_name(sources[k]): indices[dataset.source[indices] == k] for k in np.unique(dataset.source[indices])
        }
    for name, members in groups.items():
        if members.size:
            chosen = stratified_indices(members, dataset.labels, dataset.file, rows_per_source, seed)
            sets[f"{split}:{name}"] = np.ascontiguousarray(dataset.rows[chosen])
    return {**sets, **synthetic}


def _source_name(entry) -> str:
    """A dataset source's name (meta["inputs"] entries carry one), else its position."""
    return str(entry.get("name")) if isinstance(entry, dict) and entry.get("name") else str(entry)
