"""Model presets: analytic counts against the paper, Keras models against the analytic counts, custom layers.

The TensorFlow part builds the full-size models once (count_params) and otherwise uses width 1/16 models.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from pktnin.trainer import presets as P

C = P.PAPER_CLASSES  # 12, the class count of the paper's Table 5 and Tables 7-8
TINY = 1 / 16

# Parameter counts for 12 classes worked out by hand from the paper's layer descriptions (they reproduce Table 5).
HAND_COUNTED_PARAMS = {
    "cnn_large": 5_755_340, "cnn_small": 626_700, "nin_large": 4_034_060, "nin_small": 1_099_660, "nin1": 1_373_204,
}  # fmt: skip


def sig(x: float, digits: int) -> float:
    return float(f"{x:.{digits - 1}e}")


# ---------------------------------------------------------------- analytic counts (no TensorFlow)


@pytest.mark.parametrize("name", sorted(HAND_COUNTED_PARAMS))
def test_parameter_counts_at_12_classes(name):
    assert P.count(name, C).params == HAND_COUNTED_PARAMS[name]


@pytest.mark.parametrize("name", ["cnn_large", "cnn_small", "nin_large"])
def test_table5_parameters_to_4_digits(name):
    assert sig(P.count(name, C).params, 4) == P.PRESETS[name].paper.params


def test_nin_small_parameters_match_table5_when_truncated():
    # 1,099,660 prints as 1.099e6 in Table 5: the paper truncates rather than rounds here.
    assert int(P.count("nin_small", C).params / 1e3) / 1e3 == P.PRESETS["nin_small"].paper.params / 1e6


def test_cnn_large_flops_match_table5_to_4_digits():
    assert sig(P.count("cnn_large", C).flops, 4) == 1.119e8


@pytest.mark.parametrize(
    "name, digits, tolerance",
    [("cnn_small", 3, 0.001), ("nin_large", 3, 0.002), ("nin1", 3, 0.0005), ("nin_small", 2, 0.0035),
     ("nin2", 2, 0.003), ("nin_parallel", 3, 0.003)],
)  # fmt: skip
def test_flops_close_to_paper(name, digits, tolerance):
    flops, paper = P.count(name, C).flops, P.PRESETS[name].paper.flops
    assert sig(flops, digits) == sig(paper, digits)
    assert abs(flops / paper - 1) < tolerance


def macs(name: str) -> int:
    """Multiply-accumulates of a preset, counted here independently of presets.count_layers."""
    length, channels, flat, total = P.PRESETS[name].input_bytes, 1, None, 0
    for layer in P.preset_layers(name, C):
        if isinstance(layer, P.Conv):
            length = -(-length // layer.stride)
            total += length * layer.kernel * channels * layer.filters
            channels = layer.filters
        elif isinstance(layer, P.MaxPool):
            length = -(-length // layer.stride)
        elif isinstance(layer, P.Flatten):
            flat = length * channels
        elif isinstance(layer, P.Dense):
            total += flat * layer.units
            flat = layer.units
    return total


def test_flops_other_conventions_fit_worse():
    """2 FLOPs per MAC alone (no bias, no pooling) misses CNN_large's 1.119e8 and CNN_small's 1.593e7."""
    assert sig(2 * macs("cnn_large"), 4) == 1.117e8 and sig(2 * macs("cnn_small"), 4) == 1.584e7
    assert sig(P.count("cnn_small", C).flops, 4) == 1.592e7  # the chosen convention: 0.05 % from 1.593e7
    for name in ("cnn_large", "cnn_small", "nin_large", "nin_small", "nin1"):
        ours, paper = P.count(name, C).flops, P.PRESETS[name].paper.flops
        assert abs(macs(name) / paper - 0.5) < 0.01  # the paper counts 2 FLOPs per multiply-add, not 1
        assert abs(ours / paper - 1) < 0.0035


def test_counter_on_a_hand_computed_network():
    layers = [P.Conv(4, 3, 2), P.MaxPool(3, 3), P.Conv(6, 1), P.Flatten(), P.Dense(5), P.Dropout(0.1),
              P.Dense(3, relu=False), P.Softmax()]  # fmt: skip
    # input 20 -> conv stride 2 -> 10x4 -> pool -> 4x4 -> conv1x1 -> 4x6 -> flatten 24 -> 5 -> 3
    params = (3 * 1 * 4 + 4) + (1 * 4 * 6 + 6) + (24 * 5 + 5) + (5 * 3 + 3)
    flops = (2 * 10 * 3 * 4 + 40) + 3 * 4 * 4 + (2 * 4 * 4 * 6 + 24) + (2 * 24 * 5 + 5) + (2 * 5 * 3 + 3) + 5 * 3
    assert P.count_layers(layers, 20) == P.Counts(params, flops)
    gap = [P.Conv(2, 1), P.GlobalAvgPool(), P.Softmax()]  # 7x1 -> 7x2 -> 2
    assert P.count_layers(gap, 7) == P.Counts(4, 2 * 7 * 2 + 14 + 14 + 10)


def test_class_count_changes_only_the_last_layer():
    for name, fan_in in [("cnn_large", 64), ("cnn_small", 64), ("nin_large", 512), ("nin_small", 256),
                         ("nin1", 64), ("cnn_deeppacket", 64)]:  # fmt: skip
        assert P.count(name, 18).params - P.count(name, C).params == (fan_in + 1) * 6, name


def test_branches_and_parallel():
    assert P.PRESETS["nin1"].start == 0 and P.PRESETS["nin1"].input_bytes == 40
    assert P.PRESETS["nin2"].start == 40 and P.PRESETS["nin2"].input_bytes == 1460
    assert P.count("nin2", C).params == P.count("nin_large", C).params
    assert P.count("nin2", C).flops < P.count("nin_large", C).flops
    header, body, fused = (P.count(n, C) for n in ("nin1", "nin2", "nin_parallel"))
    assert fused.params == header.params + body.params
    assert fused.flops == header.flops + body.flops + 3 * C


def test_nin1_parameter_count_cannot_match_the_paper():
    """Its six convolutions of 200 filters alone exceed the paper's 2.033e5 parameters (see docs/models.md)."""
    convs = [layer for layer in P.preset_layers("nin1", C) if isinstance(layer, P.Conv)]
    assert P.count_layers(convs, 40).params == 281_800 > P.PRESETS["nin1"].paper.params


def test_deeppacket_reading_is_the_best_of_the_search():
    ranked = P.deeppacket_search(C)
    assert len(ranked) == 5 * 5 * 6 * 6
    best = ranked[0]
    assert (best["strides"], best["pools"]) == (P.DEEPPACKET_READING["strides"], P.DEEPPACKET_READING["pools"])
    counts = P.count("cnn_deeppacket", C)
    assert (counts.params, counts.flops) == (best["params"], best["flops"])
    assert best["max_err"] < 0.11 and abs(best["flops_err"]) < 0.04
    literal = next(r for r in ranked if r["strides"] == (5, 5) and r["pools"] == (None, None))
    assert literal["max_err"] > 0.5  # the text as written misses the FLOPs by more than half


def test_width_scales_everything_but_the_classes():
    layers = P.preset_layers("nin1", 7, width=0.05)
    assert [layer.filters for layer in layers if isinstance(layer, P.Conv)] == [10] * 6
    assert [layer.units for layer in layers if isinstance(layer, P.Dense)] == [51, 3, 7]
    assert P.count("nin_large", C, width=TINY).params < P.count("nin_large", C).params / 100


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown model preset 'nin3'.*nin_parallel"):
        P.count("nin3", C)
    with pytest.raises(ValueError, match="num_classes"):
        P.preset_layers("nin1", 1)
    with pytest.raises(ValueError, match="width"):
        P.preset_layers("nin1", C, width=0)
    with pytest.raises(ValueError, match="no layer list"):
        P.preset_layers("nin_parallel", C)


def test_dropout_placement():
    layers = P.preset_layers("cnn_large", C, dropout=0.1)
    after_dense = [layers[i + 1] for i, layer in enumerate(layers) if isinstance(layer, P.Dense) and layer.relu]
    assert after_dense == [P.Dropout(0.1)] * 2
    nin = P.preset_layers("nin_large", C, dropout=0.1)
    after_pool = [nin[i + 1] for i, layer in enumerate(nin) if isinstance(layer, P.MaxPool)]
    assert after_pool == [P.Dropout(0.1)] * 4


# ---------------------------------------------------------------- command line


def models_app() -> typer.Typer:
    from pktnin.cli import models as cli_models

    app = typer.Typer()
    cli_models.register(app)

    @app.callback()
    def root() -> None:  # keeps `models` a sub-command, as in the real app
        pass

    return app


def test_cli_models_json():
    result = CliRunner().invoke(models_app(), ["models", "--json", "--classes", "12"])
    assert result.exit_code == 0, result.output
    rows = {r["preset"]: r for r in json.loads(result.output)["presets"]}
    assert list(rows) == list(P.PRESETS)
    for name, row in rows.items():
        counts = P.count(name, 12)
        assert (row["params"], row["flops"]) == (counts.params, counts.flops)
        paper = P.PRESETS[name].paper
        assert row["paper_params"] == (paper.params if paper else None)
    assert rows["nin_small_body"]["paper_source"] == "beyond the paper"
    assert rows["nin_small_body"]["params"] + rows["nin1"]["params"] == rows["nin_parallel_small"]["params"]
    assert rows["nin1"]["input_bytes"] == 40 and rows["nin2"]["input_start"] == 40


def test_cli_models_table_default_18_classes():
    from pktnin.cli.models import compact

    result = CliRunner().invoke(models_app(), ["models"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert "18 classes" in result.output and "nin_parallel" in result.output
    line = next(x for x in result.output.splitlines() if x.startswith("cnn_large "))
    # the counts at 18 classes, at the paper's 12, and the paper's own figures
    assert line.split()[2:] == [
        compact(P.count("cnn_large", 18).params), compact(P.count("cnn_large", 18).flops),
        compact(P.count("cnn_large", 12).params), compact(P.count("cnn_large", 12).flops),
        compact(P.PRESETS["cnn_large"].paper.params), compact(P.PRESETS["cnn_large"].paper.flops),
    ]  # fmt: skip
    assert compact(5755730) == "5.756M" and compact(1099660) == "1.100M" and compact(203300) == "203.3k"
    bad = CliRunner().invoke(models_app(), ["models", "--classes", "1"])
    assert bad.exit_code != 0


@pytest.mark.parametrize("columns", ["80", "60", "120"])
def test_cli_models_fits_the_width_in_plain_text(columns):
    """Every line fits COLUMNS (80 when not a terminal), with no escape codes; names and numbers are never cut."""
    from pktnin.engine.catalog import bundled_models

    result = CliRunner().invoke(models_app(), ["models"], env={"COLUMNS": columns})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(x) for x in lines) <= int(columns) and "\x1b" not in result.output
    assert not any("…" in x for x in lines)
    for path in bundled_models():
        assert path.stem in lines  # one block per bundled model, headed by its whole name
    assert {x.split()[0] for x in lines if x.split() and x.split()[0] in P.PRESETS} == set(P.PRESETS)
    wide = CliRunner().invoke(models_app(), ["models"], env={"COLUMNS": "200"})
    assert max(len(x) for x in wide.output.splitlines()) > 80  # a wider terminal is used


def test_cli_models_not_a_terminal_is_80_columns(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    result = CliRunner().invoke(models_app(), ["models"])
    assert max(len(x) for x in result.output.splitlines()) <= 80


def test_model_facts_one_line_each():
    from pktnin.cli.models import model_block

    row = {
        "name": "m", "preset": "p", "alpha": None, "classes": ["a", "b"], "input_dtype": "uint8",
        "size_bytes": 2_000_000, "trained": {"rows": 10}, "speed": None, "agreement": {}, "decide": "packet",
    }  # fmt: skip
    lines = model_block(row, 80)
    assert lines[0] == "m" and len(lines) == 1 + 7
    assert lines[2].split() == ["classes", "2:", "a,", "b"]


def test_models_command_registered_on_the_app():
    cli = pytest.importorskip("pktnin.cli")  # the full app imports every command module
    result = CliRunner().invoke(cli.app, ["models", "--json", "--classes", "5"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["presets"][0]["classes"] == 5


# ---------------------------------------------------------------- Keras models (TensorFlow)


@pytest.fixture(scope="module")
def keras_env():
    pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    from pktnin import keras_layers as layers
    from pktnin.trainer import models

    return keras, layers, models


def run(model, x: np.ndarray) -> np.ndarray:
    return model(x, training=False).numpy()


def rows_batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 1500)).astype(np.float32) / 255.0


@pytest.mark.tf
def test_keras_parameters_equal_analytic_counts(keras_env):
    _, _, models = keras_env
    for name in P.PRESETS:
        assert models.build_model(name, C).count_params() == P.count(name, C).params, name
    assert models.build_model("nin1", 18, width=TINY).count_params() == P.count("nin1", 18, width=TINY).params


@pytest.mark.tf
def test_preset_layers_on_other_bytes(keras_env):
    _, _, models = keras_env
    body = models.build_model_on_bytes("nin_small", 40, 1500, C, width=TINY)
    assert body.count_params() == P.count_layers(P.preset_layers("nin_small", C, TINY), 1460).params
    x = rows_batch(4)
    changed = x.copy()
    changed[:, :40] = 0.5  # header bytes: not read by a body network
    np.testing.assert_allclose(run(body, x), run(body, changed), atol=1e-6)
    assert run(body, x).shape == (4, C)


@pytest.mark.tf
def test_analytic_flops_equal_tensorflow_profiler(keras_env):
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    _, _, models = keras_env
    for name in P.PRESETS:
        model = models.build_model(name, 5, width=TINY)
        fn = tf.function(lambda x, model=model: model(x, training=False))
        frozen = convert_variables_to_constants_v2(fn.get_concrete_function(tf.TensorSpec([1, 1500], tf.float32)))
        options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        options["output"] = "none"
        profiled = tf.compat.v1.profiler.profile(graph=frozen.graph, options=options).total_float_ops
        assert profiled == P.count(name, 5, width=TINY).flops, name


@pytest.mark.tf
def test_forward_shapes_and_probabilities(keras_env):
    _, _, models = keras_env
    x = rows_batch(3)
    for name in P.PRESETS:
        model = models.build_model(name, 7, width=TINY)
        assert model.input_shape == (None, 1500)
        probs = run(model, x)
        assert probs.shape == (3, 7), name
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.tf
def test_branches_read_only_their_bytes(keras_env):
    import keras

    _, _, models = keras_env
    keras.utils.set_random_seed(0)  # initial weights of its own: not those left by the tests before
    x = rows_batch(2, seed=1)
    header, body = x.copy(), x.copy()
    header[:, 40:] = rows_batch(2, seed=2)[:, 40:]  # same header, other body
    body[:, :40] = rows_batch(2, seed=3)[:, :40]  # same body, other header
    nin1 = models.build_model("nin1", 4, width=TINY)
    nin2 = models.build_model("nin2", 4, width=TINY)
    np.testing.assert_allclose(run(nin1, header), run(nin1, x), atol=1e-7)
    np.testing.assert_allclose(run(nin2, body), run(nin2, x), atol=1e-7)
    assert not np.allclose(run(nin1, body), run(nin1, x))


@pytest.mark.tf
def test_byte_slice(keras_env):
    _, layers, _ = keras_env
    x = rows_batch(2)
    np.testing.assert_array_equal(layers.ByteSlice(40, 1500)(x).numpy(), x[:, 40:, None])
    with pytest.raises(ValueError, match="start < stop"):
        layers.ByteSlice(40, 40)
    with pytest.raises(ValueError, match="does not fit"):
        layers.ByteSlice(0, 1600)(x)


@pytest.mark.tf
def test_alpha_fusion_math(keras_env):
    _, layers, models = keras_env
    y1 = np.array([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]], np.float32)
    y2 = np.array([[0.0, 0.0, 1.0], [0.6, 0.2, 0.2]], np.float32)
    expected = np.array([[0.3, 0.0, 0.7], [0.48, 0.23, 0.29]], np.float32)  # 0.3 * y1 + 0.7 * y2 by hand
    np.testing.assert_allclose(layers.AlphaFusion(0.3)([y1, y2]).numpy(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="alpha"):
        layers.AlphaFusion(1.5)

    nin1 = models.build_model("nin1", 3, width=TINY)
    nin2 = models.build_model("nin2", 3, width=TINY)
    fused = models.build_parallel(nin1, nin2, 0.52)
    x = rows_batch(4)
    want = 0.52 * run(nin1, x) + 0.48 * run(nin2, x)
    np.testing.assert_allclose(run(fused, x), want, atol=1e-6)
    assert fused.count_params() == nin1.count_params() + nin2.count_params()
    with pytest.raises(ValueError, match="named"):
        models.build_parallel(nin1, nin1, 0.5)


@pytest.mark.tf
def test_keras_file_round_trip_in_safe_mode(keras_env, tmp_path):
    keras, layers, models = keras_env
    fused = models.build_parallel(models.build_model("nin1", 3, width=TINY),
                                  models.build_model("nin2", 3, width=TINY), 0.25)  # fmt: skip
    path = tmp_path / "par.keras"
    fused.save(path)
    loaded = keras.saving.load_model(path, compile=False, safe_mode=True)
    x = rows_batch(5)
    np.testing.assert_allclose(run(loaded, x), run(fused, x), atol=1e-6)
    assert [type(layer) for layer in loaded.layers if isinstance(layer, layers.AlphaFusion)] == [layers.AlphaFusion]
    assert loaded.get_layer("alpha_fusion").alpha == 0.25


@pytest.mark.tf
def test_onnx_export_matches_keras(keras_env):
    import tensorflow as tf

    tf2onnx = pytest.importorskip("tf2onnx")
    ort = pytest.importorskip("onnxruntime")
    _, _, models = keras_env
    fused = models.build_parallel(models.build_model("nin1", 4, width=TINY),
                                  models.build_model("nin2", 4, width=TINY), 0.4)  # fmt: skip
    fn = tf.function(lambda row: fused(row, training=False))
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=(tf.TensorSpec([None, 1500], tf.float32, name="row"),),
                                             opset=17)  # fmt: skip
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rows_batch(6)
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, run(fused, x), atol=1e-5)
