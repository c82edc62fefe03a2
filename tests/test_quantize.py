"""int8 quantization, the CPU engine choice (--precision, session layouts) and the OpenVINO runner.

The network here is small but trained: an MLP fitted (scikit-learn) on rows that the real CPU kernel made from a
generated capture, labelled by flow kind, then written as a pktnin ONNX graph with a Conv front end.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from pktnin.layout import ROW_LEN  # noqa: E402

KINDS = {(6, 443): "tls", (6, 80): "http", (6, 22): "ssh", (17, 443): "quic", (17, 16384): "rtp"}
HEAD = 96  # bytes of the row the network reads
FILTERS = 8


def kernel_rows(tmp_path: Path, packets: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows from the real read+prep kernel on a generated capture, and each row's flow-kind label."""
    from pktnin.packets import iter_packets
    from pktnin.synth import write_synthetic_capture

    capture = write_synthetic_capture(tmp_path / f"cap{seed}.pcap", packets=packets, seed=seed)
    rows, labels = [], []
    names = sorted(set(KINDS.values()))
    for batch in iter_packets([capture]):
        proto = batch.meta["proto"]
        ports = np.minimum(batch.meta["src_port"], batch.meta["dst_port"])
        label = np.array([names.index(KINDS[(int(p), int(q))]) for p, q in zip(proto, ports)])
        rows.append(batch.rows)
        labels.append(label)
    return np.concatenate(rows), np.concatenate(labels)


def conv_mlp_model(path: Path, classes: list[str], conv_w, conv_b, w1, b1, w2, b2) -> Path:
    """row uint8 -> /255 -> first HEAD bytes -> Conv1D (as the Keras export writes it: Unsqueeze, 2-D Conv,
    Squeeze, bias Add [1,C,1]) -> ReLU -> flatten -> Dense ReLU -> Dense -> Softmax -> probs."""
    k = conv_w.shape[-1]
    inits = [
        numpy_helper.from_array(np.array(1 / 255, np.float32), "scale"),
        numpy_helper.from_array(np.array([0], np.int64), "s0"),
        numpy_helper.from_array(np.array([HEAD], np.int64), "s1"),
        numpy_helper.from_array(np.array([1], np.int64), "ax1"),
        numpy_helper.from_array(np.array([2], np.int64), "ax2"),
        numpy_helper.from_array(conv_w.reshape(FILTERS, 1, 1, k).astype(np.float32), "cw"),
        numpy_helper.from_array(conv_b.reshape(1, FILTERS, 1).astype(np.float32), "cb"),
        numpy_helper.from_array(np.array([-1, FILTERS * (HEAD // k)], np.int64), "flat"),
        numpy_helper.from_array(w1.astype(np.float32), "w1"),
        numpy_helper.from_array(b1.astype(np.float32), "b1"),
        numpy_helper.from_array(w2.astype(np.float32), "w2"),
        numpy_helper.from_array(b2.astype(np.float32), "b2"),
    ]
    n = helper.make_node
    nodes = [
        n("Cast", ["row"], ["rf"], to=TensorProto.FLOAT),
        n("Mul", ["rf", "scale"], ["x"]),
        n("Slice", ["x", "s0", "s1", "ax1"], ["head"], name="slice"),
        n("Unsqueeze", ["head", "ax1"], ["h3"]),
        n("Unsqueeze", ["h3", "ax2"], ["h4"]),
        n("Conv", ["h4", "cw"], ["c4"], name="conv", kernel_shape=[1, k], strides=[1, k]),
        n("Squeeze", ["c4", "ax2"], ["c3"]),
        n("Add", ["c3", "cb"], ["cbias"], name="conv_bias"),
        n("Relu", ["cbias"], ["crelu"]),
        n("Reshape", ["crelu", "flat"], ["f"]),
        n("MatMul", ["f", "w1"], ["h1"], name="dense1"),
        n("Add", ["h1", "b1"], ["h1b"]),
        n("Relu", ["h1b"], ["h1r"]),
        n("MatMul", ["h1r", "w2"], ["logits0"], name="dense2"),
        n("Add", ["logits0", "b2"], ["logits"]),
        n("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_mlp",
        [helper.make_tensor_value_info("row", TensorProto.UINT8, ["batch", ROW_LEN])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", len(classes)])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="pktnin-tests")
    model.ir_version = 8
    helper.set_model_props(
        model,
        {
            "pktnin.classes": json.dumps(classes),
            "pktnin.alpha": "null",
            "pktnin.layout_version": "1",
            "pktnin.preset": "conv_mlp",
            "pktnin.input_dtype": "uint8",
            "pktnin.provenance": json.dumps({"trained": "tests"}),
        },
    )
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(fp32 model path, train rows, their labels, held-out rows, their labels)."""
    pytest.importorskip("sklearn")
    from sklearn.neural_network import MLPClassifier

    tmp = tmp_path_factory.mktemp("trained")
    rows, labels = kernel_rows(tmp, 3000, seed=1)
    held_rows, held_labels = kernel_rows(tmp, 1500, seed=2)
    rng = np.random.default_rng(0)
    k = 4
    conv_w = rng.normal(0, 0.5, size=(FILTERS, k))
    conv_b = rng.normal(0, 0.1, size=FILTERS)

    def features(r):  # the Conv front end in numpy, channel-major flatten as the graph's Reshape does
        x = r[:, :HEAD].astype(np.float32) / 255
        windows = x.reshape(len(r), HEAD // k, k)
        return np.maximum(np.einsum("nlk,fk->nfl", windows, conv_w) + conv_b[None, :, None], 0).reshape(len(r), -1)

    mlp = MLPClassifier(hidden_layer_sizes=(32,), max_iter=300, random_state=0).fit(features(rows), labels)
    assert mlp.score(features(held_rows), held_labels) > 0.8  # it learned the flow kinds
    classes = sorted(set(KINDS.values()))
    path = conv_mlp_model(
        tmp / "conv_mlp.onnx",
        classes,
        conv_w,
        conv_b,
        mlp.coefs_[0],
        mlp.intercepts_[0],
        mlp.coefs_[1],
        mlp.intercepts_[1],
    )
    return path, rows, labels, held_rows, held_labels


@pytest.fixture(scope="module")
def quantized(trained):
    from pktnin.engine.quantize import quantize_model

    path, rows, _, held_rows, _ = trained
    result = quantize_model(
        path,
        path.with_name("conv_mlp.int8.onnx"),
        rows[:256],
        held_rows[:600],
        methods=("minmax",),
        exclude_levels=("none", "edges"),
        max_extra_excluded=1,
        checks={"held": held_rows[600:]},
    )
    return result


def test_fold_conv_bias_keeps_the_outputs(trained, tmp_path):
    from pktnin.engine.graph_rewrite import fold_conv_bias
    from pktnin.engine.quantize import probabilities

    path, rows, *_ = trained
    proto = onnx.load(str(path))
    assert fold_conv_bias(proto) == 1
    assert "conv_bias" not in {node.name for node in proto.graph.node}
    folded = tmp_path / "folded.onnx"
    onnx.save(proto, str(folded))
    np.testing.assert_allclose(probabilities(folded, rows[:200]), probabilities(path, rows[:200]), atol=1e-5)


def test_int8_agrees_with_fp32_on_kernel_rows(trained, quantized):
    from pktnin.engine.ort_runner import OnnxRuntimeRunner
    from pktnin.engine.quantize import agreement, probabilities

    path, _, _, held_rows, held_labels = trained
    proto = onnx.load(str(quantized.path))
    ops = {node.op_type for node in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ form
    fp32 = probabilities(path, held_rows)
    with OnnxRuntimeRunner(quantized.path) as runner:
        int8 = runner.predict(held_rows)
    agree, max_diff = agreement(int8, fp32)
    assert agree >= 0.99, agree
    assert max_diff < 0.2
    # Same labels, about the same accuracy.
    acc32 = (fp32.argmax(1) == held_labels).mean()
    acc8 = (int8.argmax(1) == held_labels).mean()
    assert abs(acc32 - acc8) <= 0.01


def test_int8_metadata_carries_provenance_and_agreement(trained, quantized):
    from pktnin.engine.cache import file_sha256
    from pktnin.engine.model_file import read_model_info, read_props

    path = trained[0]
    props = read_props(quantized.path)
    assert props["pktnin.precision"] == "int8"
    assert json.loads(props["pktnin.provenance"]) == {"trained": "tests"}
    quant = json.loads(props["pktnin.quantization"])
    assert quant["source_sha256"] == file_sha256(path)
    assert quant["calibration"] == {"rows": 256, "split": "train", "stratified": "class,file"}
    assert quant["validation"]["argmax_agreement"] == quantized.chosen.agreement
    agreement = json.loads(props["pktnin.agreement"])
    ort = agreement["engines"]["onnxruntime:int8"]
    assert ort["selection"] == quantized.chosen.agreement and set(ort) == {"selection", "held"}
    assert agreement["rows"] == {"selection": 600, "held": len(trained[3]) - 600}
    assert quantized.checks["onnxruntime:int8"] == ort  # what the result reports is what the file records
    info = read_model_info(quantized.path)
    assert info.classes == read_model_info(path).classes and info.preset == "conv_mlp"


def test_exclusion_levels_name_edges_and_fusion():
    from pktnin.engine.quantize import nodes_to_exclude

    path = Path(__file__).resolve().parents[1] / "pktnin" / "models" / "nin_parallel_small_port.onnx"
    proto = onnx.load(str(path), load_external_data=False)
    edges = nodes_to_exclude(proto, "edges")
    fusion = nodes_to_exclude(proto, "edges+fusion")
    assert all(n.startswith("port/") for n in nodes_to_exclude(proto, "none"))  # only the port branch
    assert any("nin1_1/conv1_1" in n for n in edges) and any("nin_small_body_1/conv1_1" in n for n in edges)
    assert any("nin1_1/dense3_1" in n for n in edges) and any("nin_small_body_1/conv16_1" in n for n in edges)
    assert sum(1 for n in edges if n.endswith("Softmax")) == 2
    assert set(edges) < set(fusion) and any("alpha_fusion" in n for n in fusion)
    with pytest.raises(ValueError):
        nodes_to_exclude(proto, "most")


def test_port_branch_of_a_fused_model_stays_float32(trained, tmp_path):
    """The port table and the fusion of a port-fused model are never quantized, at any exclusion level."""
    from pktnin.engine.port_table import PORT_NODE_PREFIX, PortTable, fuse_port_onnx
    from pktnin.engine.quantize import nodes_to_exclude, quantize_model

    path, rows, labels, held_rows, _ = trained
    table = PortTable.fit(rows, labels, len(KINDS))
    fused = fuse_port_onnx(path, table, 0.4, tmp_path / "fused.onnx", {"data": "test"})
    proto = onnx.load(str(fused))
    port_nodes = {n.name for n in proto.graph.node if n.name.startswith(PORT_NODE_PREFIX)}
    assert len(port_nodes) > 10
    for level in ("none", "edges", "edges+fusion"):
        assert port_nodes <= set(nodes_to_exclude(proto, level))
    assert not port_nodes & set(nodes_to_exclude(onnx.load(str(path)), "edges+fusion"))
    result = quantize_model(fused, tmp_path / "fused.int8.onnx", rows[:256], held_rows[:400], methods=("minmax",),
                            exclude_levels=("none",), max_extra_excluded=0)  # fmt: skip
    q = onnx.load(str(result.path))
    table_name = f"{PORT_NODE_PREFIX}const/table"
    assert any(init.name == table_name and init.data_type == TensorProto.FLOAT for init in q.graph.initializer)
    assert not [n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.output[0].startswith(table_name)]
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)  # the network itself is int8
    assert result.chosen.agreement > 0.97


def test_a_refit_model_is_checked_on_rows_it_never_trained_on(trained, tmp_path):
    from pktnin.engine.model_file import read_props, set_props
    from pktnin.engine.quantize import check_split

    path = trained[0]
    assert check_split(path) == "val"
    proto = onnx.load(str(path))
    props = read_props(path)
    props["pktnin.provenance"] = json.dumps({"fit": "train+val"})
    set_props(proto, props)
    refit = tmp_path / "refit.onnx"
    onnx.save(proto, str(refit))
    assert check_split(refit) == "test"


def test_stratified_sample_spreads_over_classes_and_files():
    from pktnin.engine.quantize import stratified_indices

    labels = np.repeat([0, 1, 2], [1000, 100, 10])
    files = np.concatenate([np.repeat([0, 1], [990, 10]), np.repeat([2, 3], 50), np.full(10, 4)])
    idx = stratified_indices(np.arange(len(labels)), labels, files, 90, seed=0)
    assert len(idx) == 90 and len(set(idx.tolist())) == 90
    counts = np.bincount(labels[idx], minlength=3)
    assert counts[2] == 10 and counts[0] == counts[1] == 40  # the small class gives its share to the others
    of_class0 = files[idx[labels[idx] == 0]]
    assert (of_class0 == 1).sum() == 10  # the 10-row file gets as many rows as the 990-row one, not 1%


def test_open_runner_int8_finds_the_quantized_model(trained, quantized):
    from pktnin.engine.runners import open_runner, open_runner_with_choice

    path, _, _, held_rows, _ = trained
    runner, choice = open_runner_with_choice(path, "onnxruntime", precision="int8")
    with runner:
        assert runner.precision == "int8" and "int8" in choice.label and choice.reason == "--precision int8"
        probs = runner.predict(held_rows[:64])
    with open_runner(quantized.path, "onnxruntime", precision="int8") as direct:
        np.testing.assert_allclose(direct.predict(held_rows[:64]), probs, atol=1e-6)


def test_auto_falls_back_to_fp32_when_no_faster_engine_agrees(trained, quantized, tmp_path, monkeypatch):
    import shutil

    from pktnin.engine import precision as prec
    from pktnin.engine.quantize import record_agreement

    monkeypatch.setenv("PKTNIN_CACHE_DIR", str(tmp_path / "cache"))
    model = shutil.copy(trained[0], tmp_path / "m.onnx")
    int8 = shutil.copy(quantized.path, tmp_path / "m.int8.onnx")
    record_agreement(
        int8,
        {
            "onnxruntime:int8": {"synthetic": 0.98},
            "openvino:int8": {"synthetic": 0.97},
            "openvino:bf16": {"synthetic": 0.99},
        },
    )
    engines = prec.candidate_engines(model, "auto")
    assert {e.precision for e in engines} == {"fp32"}
    choice = prec.choose_engine(model, "auto", batch=64)
    assert choice.engine.precision == "fp32" and choice.engine.backend in ("onnxruntime", "openvino")
    assert "no faster engine agrees" in choice.reason
    # Given the int8 model itself, auto runs it (ONNX Runtime), and OpenVINO's poorly agreeing run is left out.
    assert {(e.backend, e.precision) for e in prec.candidate_engines(int8, "auto")} == {("onnxruntime", "int8")}
    runner, choice = prec.open_cpu_runner(model, "onnxruntime", "auto", max_batch=64)
    with runner:
        assert runner.precision == "fp32" and runner.backend == "onnxruntime"


def test_auto_takes_the_fastest_agreeing_engine(trained, quantized, tmp_path, monkeypatch):
    import shutil

    from pktnin.engine import precision as prec
    from pktnin.engine.quantize import record_agreement

    monkeypatch.setenv("PKTNIN_CACHE_DIR", str(tmp_path / "cache"))
    model = shutil.copy(trained[0], tmp_path / "m.onnx")
    int8 = shutil.copy(quantized.path, tmp_path / "m.int8.onnx")
    record_agreement(int8, {"onnxruntime:int8": {"synthetic": 0.95}})
    engines = prec.candidate_engines(model, "onnxruntime", min_agreement=0.9, workers=1)
    assert [e.precision for e in engines] == ["fp32", "int8"]

    def fake(speeds):
        return lambda engines, batch, threads, use_cache=True: {e.label(): speeds[e.precision] for e in engines}

    monkeypatch.setattr(prec, "timed", fake({"fp32": 100.0, "int8": 250.0}))
    choice = prec.choose_engine(model, "onnxruntime", batch=64, workers=1, min_agreement=0.9)
    assert choice.engine.precision == "int8" and "2.50x" in choice.reason
    monkeypatch.setattr(prec, "timed", fake({"fp32": 100.0, "int8": 80.0}))
    assert prec.choose_engine(model, "onnxruntime", batch=64, workers=1, min_agreement=0.9).engine.precision == "fp32"


def test_auto_needs_agreement_on_every_held_out_set(trained, quantized, tmp_path, monkeypatch):
    """An engine measured only on the rows that chose its quantization (older files) is not eligible; one held-out
    set below the bound rules it out; at or above it on all of them it is a candidate."""
    import shutil

    import onnx

    from pktnin.engine import precision as prec
    from pktnin.engine.model_file import AGREEMENT_KEY, set_props
    from pktnin.engine.quantize import record_agreement

    monkeypatch.setattr(prec, "openvino_available", lambda: False)
    model = shutil.copy(trained[0], tmp_path / "m.onnx")
    int8 = Path(shutil.copy(quantized.path, tmp_path / "m.int8.onnx"))
    proto = onnx.load(str(int8))
    set_props(proto, {AGREEMENT_KEY: json.dumps({"onnxruntime:int8": 0.999, "rows": 600})})  # the older form
    onnx.save(proto, str(int8))
    assert prec.recorded_agreement(int8) == {"onnxruntime:int8": (("selection", 0.999),)}
    assert [e.precision for e in prec.candidate_engines(model, "onnxruntime", workers=1)] == ["fp32"]
    record_agreement(int8, {"onnxruntime:int8": {"test:a": 0.999, "synthetic": 0.994}})
    assert [e.precision for e in prec.candidate_engines(model, "onnxruntime", workers=1)] == ["fp32"]
    record_agreement(int8, {"onnxruntime:int8": {"synthetic": 0.995}})
    engines = prec.candidate_engines(model, "onnxruntime", workers=1)
    assert [e.precision for e in engines] == ["fp32", "int8"]
    assert engines[1].held_out_agreement() == 0.995 and dict(engines[1].agreement)["selection"] == 0.999


def test_synthetic_check_rows_are_reproducible_and_odd():
    from pktnin.engine.check_rows import synthetic_rows

    first, again, other = synthetic_rows(600, seed=5), synthetic_rows(600, seed=5), synthetic_rows(600, seed=6)
    assert set(first) == {"synthetic", "odd", "services"}
    for name, rows in first.items():
        assert rows.dtype == np.uint8 and rows.shape[1] == 1500 and len(rows) > 100
        np.testing.assert_array_equal(rows, again[name])
        assert not np.array_equal(rows[:50], other[name][:50])
    # The odd set holds truncated captures: rows whose payload stops short of the packet's.
    assert (first["odd"][:, 40:].sum(1) == 0).sum() == 0  # every row kept some payload (empty ones are skipped)
    ports = first["services"][:, 20:24].astype(int)
    server = np.minimum(ports[:, 0] * 256 + ports[:, 1], ports[:, 2] * 256 + ports[:, 3])
    assert len(np.unique(server)) > 6  # services on other ports than the synthetic set's six


def test_int8_without_a_quantized_model_says_how_to_make_one(trained, tmp_path):
    import shutil

    from pktnin.engine.precision import fixed_engine

    model = shutil.copy(trained[0], tmp_path / "lonely.onnx")
    with pytest.raises(FileNotFoundError, match="pktnin quantize"):
        fixed_engine(model, "onnxruntime", "int8", None)
    with pytest.raises(ValueError, match="openvino"):
        fixed_engine(model, "onnxruntime", "bf16", None)
    assert fixed_engine(model, "auto", "bf16", None).backend == "openvino"


def test_session_pool_matches_one_session(trained):
    from pktnin.engine.ort_runner import OnnxRuntimeRunner
    from pktnin.engine.workers import SessionPoolRunner

    path, _, _, held_rows, _ = trained
    with OnnxRuntimeRunner(path) as one, SessionPoolRunner(path, workers=3, max_batch=128) as pool:
        for n in (1, 17, 100, 700):
            np.testing.assert_allclose(pool.predict(held_rows[:n]), one.predict(held_rows[:n]), atol=1e-6)


def test_openvino_runner_matches_onnxruntime(trained, quantized):
    pytest.importorskip("openvino")
    from pktnin.engine.errors import ModelMismatchError
    from pktnin.engine.openvino_runner import OpenVinoRunner, cpu_has_bf16
    from pktnin.engine.ort_runner import OnnxRuntimeRunner

    path, _, _, held_rows, _ = trained
    with OnnxRuntimeRunner(path) as ref_runner:
        ref = ref_runner.predict(held_rows)
    with OpenVinoRunner(path, precision="fp32", max_batch=256) as ov:
        assert ov.classes == ref_runner.classes if ref_runner.info else True
        got = ov.predict(held_rows)
        np.testing.assert_allclose(got, ref, atol=1e-4)
        out = ov.new_output(5)
        ov.infer(held_rows[:5], out)
        np.testing.assert_allclose(out, ref[:5], atol=1e-4)
    with OpenVinoRunner(quantized.path, precision="int8") as ov8:
        assert (ov8.predict(held_rows).argmax(1) == ref.argmax(1)).mean() >= 0.98
    if cpu_has_bf16():
        with OpenVinoRunner(path, precision="bf16") as bf:
            assert (bf.predict(held_rows).argmax(1) == ref.argmax(1)).mean() >= 0.98
    with pytest.raises(ModelMismatchError, match="int8"):
        OpenVinoRunner(path, precision="int8").load()


def test_tensorrt_takes_only_symmetric_qdq(trained, quantized, tmp_path):
    from pktnin.engine.quantize import quantize_model
    from pktnin.engine.trt_build import qdq_build_precision

    path, rows, _, held_rows, _ = trained
    with pytest.raises(ValueError, match="--target tensorrt"):
        qdq_build_precision(quantized.path, "fp32")  # uint8 activations: the CPU form
    with pytest.raises(ValueError, match="pktnin quantize"):
        qdq_build_precision(path, "int8")  # a float model
    assert qdq_build_precision(path, "fp16") == "fp16"
    trt_form = quantize_model(
        path,
        tmp_path / "trt.int8.onnx",
        rows[:128],
        held_rows[:300],
        methods=("minmax",),
        exclude_levels=("edges",),
        target="tensorrt",
        max_extra_excluded=0,
    )
    assert qdq_build_precision(trt_form.path, "fp32") == "int8"


def test_quantize_and_score_cli(trained, tmp_path, monkeypatch):
    import shutil

    from typer.testing import CliRunner

    from pktnin.cli import app
    from pktnin.synth import write_synthetic_capture

    monkeypatch.setenv("PKTNIN_CACHE_DIR", str(tmp_path / "cache"))
    path, rows, labels, held_rows, held_labels = trained
    data = write_dataset_dir(tmp_path / "ds", rows, labels, held_rows, held_labels)
    model = Path(shutil.copy(path, tmp_path / "m.onnx"))
    cli = CliRunner()
    result = cli.invoke(
        app,
        [
            "quantize",
            str(model),
            "--data",
            str(data),
            "--calibration-rows",
            "200",
            "--validation-rows",
            "400",
            "--methods",
            "minmax",
            "--agreement",
            "0.9",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.int8.onnx").is_file() and "argmax agreement" in result.output
    assert result.stdout == "", result.stdout  # ONNX Runtime's calibration chatter stays off the terminal
    capture = write_synthetic_capture(tmp_path / "cap.pcap", packets=300, seed=3)
    result = cli.invoke(
        app,
        [
            "score",
            str(capture),
            "--model",
            str(model),
            "--precision",
            "int8",
            "--engine-workers",
            "1",
            "--out",
            str(tmp_path / "p.parquet"),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "engine: onnxruntime int8" in result.output
    result = cli.invoke(
        app,
        [
            "bench",
            str(capture),
            "--model",
            str(model),
            "--precision",
            "fp32,int8",
            "--engine-workers",
            "1",
            "--runs",
            "1",
            "--batch",
            "64",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert [e["engine_precision"] for e in report["engines"]] == ["fp32", "int8"]
    assert report["engines"][1]["vs_first"]["end_to_end"] > 0


def write_dataset_dir(out: Path, rows, labels, held_rows, held_labels) -> Path:
    """A dataset directory (train = rows, val = held rows) written by the project's own writer."""
    from pktnin.dataset.format import write_dataset

    all_rows = np.concatenate([rows, held_rows])
    all_labels = np.concatenate([labels, held_labels]).astype(np.int64)
    split = np.concatenate([np.zeros(len(rows)), np.ones(len(held_rows))]).astype(np.int8)
    flow = np.arange(len(all_rows), dtype=np.int64)
    meta = {"classes": sorted(set(KINDS.values())), "source_kind": "tests"}
    write_dataset(out, all_rows, all_labels, split, flow, meta)
    return out


def test_engine_bench_rooflines(trained, quantized):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import bench_engine

    path = trained[0]
    # Conv: 8 filters x 24 positions x 4 taps; dense1: 192 x 32; dense2: 32 x 5 classes.
    assert bench_engine.model_macs(path) == 8 * 24 * 4 + 192 * 32 + 32 * 5
    entry = {"packets_per_s": 1000.0, "precision": "int8"}
    line = bench_engine.roofline(entry, 7072, {"fp32": 1e11, "int8": 4e11})
    assert line["achieved_gops"] == pytest.approx(1000 * 2 * 7072 / 1e9)
    assert line["peak_fraction"] == pytest.approx(1000 * 2 * 7072 / 4e11)
    args = bench_engine.parse_args(
        [
            "--model",
            str(path),
            "--int8",
            str(quantized.path),
            "--engines",
            "ort-fp32,ort-int8-sessions",
            "--runs",
            "2",
            "--seconds",
            "0.1",
            "--gemm-size",
            "128",
        ]
    )
    report = bench_engine.bench_engines(args)
    rows = {r["engine"]: r for r in report["results"]}
    assert set(rows) == {"ort-fp32", "ort-int8-sessions"}
    assert rows["ort-fp32"]["vs_first"] == 1.0 and rows["ort-int8-sessions"]["argmax_agreement"] >= 0.98
    assert set(report["gemm_peak_gops"]) >= {"fp32", "int8"}
    for r in rows.values():
        assert 0 < r["roofline"]["peak_fraction"] and len(r["runs"]) == 2


def test_quantize_cli_keeps_onnx_runtime_chatter_off_stdout(tmp_path, monkeypatch):
    """ONNX Runtime's histogram calibrators print to stdout; the command's stdout stays empty, its report stays."""
    from types import SimpleNamespace

    from onnx_fixtures import tiny_model
    from typer.testing import CliRunner

    from pktnin.cli import app
    from pktnin.engine import quantize as q

    rng = np.random.default_rng(0)
    rows = rng.integers(0, 256, (300, ROW_LEN), dtype=np.uint8)
    labels = rng.integers(0, 2, 300)
    data = write_dataset_dir(tmp_path / "ds", rows[:200], labels[:200], rows[200:], labels[200:])
    model = tiny_model(tmp_path / "m.onnx", ["a", "b"], input_dtype="uint8")

    def chatty(src, target_path, *args, **kwargs):
        print("Collecting tensor data and making histogram ...")  # what calibrate.py prints
        chosen = SimpleNamespace(method="percentile", excluded_nodes=[], exclude="none", agreement=1.0)
        checks = {"onnxruntime:int8": {"selection": 1.0, "synthetic": 1.0}}
        return SimpleNamespace(path=target_path, chosen=chosen, validation_rows=100, reached_target=True, checks=checks)

    monkeypatch.setattr(q, "quantize_model", chatty)
    args = ["quantize", str(model), "--data", str(data), "--calibration-rows", "100", "--validation-rows", "100"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and "Collecting" not in result.output
    assert "percentile calibration" in result.stderr
