"""A missing optional extra is one line naming the pip command; a missing model file is reported as missing first."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pktnin.cli import app
from pktnin.cli.errors import EXIT_USAGE, exit_codes
from pktnin.extras import EXTRA_OF, MissingExtraError, missing_extra
from pktnin.synth import write_synthetic_capture

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    return write_synthetic_capture(tmp_path_factory.mktemp("extras") / "cap.pcap", packets=40, seed=5)


def error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("error: ")]


@pytest.mark.parametrize("suffix", [".plan", ".keras", ".onnx"])
def test_missing_model_file_is_reported_missing_whatever_its_engine(capture, tmp_path, suffix):
    model = tmp_path / f"missing{suffix}"
    result = CliRunner().invoke(app, ["score", str(capture), "--model", str(model), "--out", str(tmp_path / "p.csv")])
    assert result.exit_code == EXIT_USAGE, result.output
    (line,) = error_lines(result)
    assert str(model) in line and "not found" in line and "TensorRT" not in line


def test_keras_model_without_the_training_extra_names_the_pip_command(capture, tmp_path, monkeypatch):
    for name in ("m.keras", "m.json"):
        (tmp_path / name).write_text("{}")
    monkeypatch.setenv("PKTNIN_CACHE_DIR", str(tmp_path / "cache"))
    for module in ("tensorflow", "keras", "tf2onnx", "onnx"):  # as on a plain install
        monkeypatch.setitem(sys.modules, module, None)
    args = ["score", str(capture), "--model", str(tmp_path / "m.keras"), "--out", str(tmp_path / "p.csv")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == EXIT_USAGE, result.output
    (line,) = error_lines(result)
    assert "m.keras" in line and "pip install 'pktnin[train]'" in line and "ModuleNotFoundError" not in line
    import pktnin

    with pytest.raises(MissingExtraError, match=re.escape("pip install 'pktnin[train]'")):
        pktnin.score([capture], model=tmp_path / "m.keras")


def test_every_command_turns_a_missing_extra_into_one_usage_line(capsys):
    with pytest.raises(Exception) as exited, exit_codes():
        import openvino_missing_for_the_test  # noqa: F401 - not an extra: a plain failure

    assert getattr(exited.value, "exit_code", None) == 1
    exc = ModuleNotFoundError("No module named 'openvino'", name="openvino")
    with pytest.raises(Exception) as exited, exit_codes():
        raise exc
    assert getattr(exited.value, "exit_code", None) == EXIT_USAGE
    assert "error: openvino is not installed: pip install 'pktnin[openvino]'" in capsys.readouterr().err


def test_every_extra_named_is_declared_in_pyproject():
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(EXTRA_OF.values()) <= set(declared)
    assert missing_extra(ModuleNotFoundError(name="numpy")) is None  # a dependency, never an extra
    message = str(missing_extra(ModuleNotFoundError(name="pandas.core"), "to_pandas()"))
    assert message == "to_pandas() needs pandas: pip install 'pktnin[pandas]'"
    assert "pktnin[pandas]" in (ROOT / "README.md").read_text()  # the API section says what to_pandas() needs
