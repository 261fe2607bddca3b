"""The command line: fast, TensorFlow-free start, help for every option, one-line errors."""

from __future__ import annotations

import builtins
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from edgecnn import ort as ort_module
from edgecnn import runtime
from edgecnn.cli import app
from edgecnn.errors import MissingDependency

COMMANDS = ("datasets", "train", "export", "predict", "profile", "serve", "verify", "tune")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


def test_importing_edgecnn_and_its_cli_does_not_import_tensorflow():
    loaded = _modules_after(
        "import edgecnn, edgecnn.cli, edgecnn.runtime, edgecnn.predict, edgecnn.profile, edgecnn.serve.server, "
        "edgecnn.verify, edgecnn.tune, edgecnn.tuned_config, edgecnn.providers, edgecnn.cli.tune"
    )
    assert not loaded & {"tensorflow", "keras", "tf2onnx"}


def test_edgecnn_help_does_not_import_tensorflow():
    loaded = _modules_after(
        "import sys\nfrom edgecnn.cli import app\nsys.argv=['edgecnn','--help']\ntry:\n    app()\nexcept SystemExit:\n    pass"
    )
    assert "tensorflow" not in loaded and "keras" not in loaded


def test_version_prints_the_package_version():
    from edgecnn import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"edgecnn {__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_of_every_command_has_help_text(command):
    click_command = typer.main.get_command(app).commands[command]
    assert click_command.help, f"{command} has no description"
    for param in click_command.params:
        if param.param_type_name == "option":
            assert getattr(param, "help", None), f"{command} {param.opts} has no help text"


def test_a_user_mistake_is_one_red_line_and_exit_code_1(tmp_path):
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "missing.onnx"), str(tmp_path)])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "missing.onnx" in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("flags", [["--conv-filters", "0x32"], ["--dense", "64,big"]])
def test_train_with_a_malformed_layer_list_is_one_red_line(tmp_path, flags):
    result = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "m"), *flags])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {flags[0]} {flags[1]}: expected ")
    assert not (tmp_path / "m").exists()


def test_missing_onnxruntime_names_the_extras_to_install(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(ort_module, "installed_onnxruntime_distributions", lambda: [])
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(MissingDependency, match=r'pip install "edgecnn\[cpu\]".*"edgecnn\[gpu\]"'):
        runtime.import_onnxruntime()


def test_both_onnxruntime_builds_installed_gives_a_warning(monkeypatch):
    monkeypatch.setattr(ort_module, "installed_onnxruntime_distributions", lambda: ["onnxruntime", "onnxruntime-gpu"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runtime.import_onnxruntime()
    assert any("both onnxruntime and onnxruntime-gpu are installed" in str(w.message) for w in caught)


@pytest.mark.parametrize("flags, prefer_fp16", [([], True), (["--no-fp16"], False)])
def test_serve_runs_the_fp16_variant_on_cuda_unless_told_not_to(monkeypatch, tmp_path, flags, prefer_fp16):
    import edgecnn.serve.server as serve_module

    seen = []
    monkeypatch.setattr(
        serve_module,
        "serve",
        lambda model, config, on_ready=None, say=None: seen.append(config),
    )
    result = CliRunner().invoke(app, ["serve", str(tmp_path / "model.onnx"), *flags])

    assert result.exit_code == 0, result.output
    assert seen[0].runner.prefer_fp16 is prefer_fp16


def test_install_completion_gives_bash_the_commands_and_options(tmp_path):
    import os
    import shutil

    edgecnn = shutil.which("edgecnn", path=str(Path(sys.executable).parent))
    if edgecnn is None or shutil.which("bash") is None:
        pytest.skip("needs the installed edgecnn script beside this Python, and bash")
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "SHELL": "/bin/bash",
        "PATH": f"{Path(edgecnn).parent}:{os.environ['PATH']}",
    }
    done = subprocess.run(
        [edgecnn, "--install-completion", "bash"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    script = tmp_path / ".bash_completions" / "edgecnn.sh"
    assert script.is_file() and f"source '{script}'" in (tmp_path / ".bashrc").read_text()

    def complete(*words: str) -> set[str]:
        line = " ".join(words)
        code = f"source '{script}'; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _edgecnn_completion edgecnn; printf '%s\\n' \"${{COMPREPLY[@]}}\""
        out = subprocess.run(["bash", "-c", code], env=env, capture_output=True, text=True, timeout=60)
        return set(out.stdout.split())

    assert {"predict", "profile"} <= complete("edgecnn", "pr")
    assert {"--device", "--decode-threads"} <= complete("edgecnn", "predict", "--de")


@pytest.mark.parametrize(
    "args, named",
    [(["predict", "m.onnx", "x", "--bogus"], "--bogus"), (["serve", "m.onnx", "--port", "eighty"], "--port")],
)
def test_a_usage_error_is_one_line_naming_the_flag_and_exit_code_2(args, named):
    result = CliRunner().invoke(app, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and named in lines[0] and f"edgecnn {args[0]} --help" in lines[0]


def test_help_shows_brackets_as_written_not_as_markup():
    result = CliRunner().invoke(app, ["predict", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and 'pip install "edgecnn[ray]"' in result.output


# The flags that come in pairs (--x/--no-x); every other boolean option is one flag, never a --no-x twin.
PAIRED_FLAGS = {"--progress", "--fp16", "--spin", "--rewrites", "--io-binding"}


def _all_commands():
    root = typer.main.get_command(app)
    for name, command in root.commands.items():
        yield from ((f"{name} {sub}", c) for sub, c in getattr(command, "commands", {}).items())
        yield name, command


@pytest.mark.parametrize("name, command", list(_all_commands()), ids=lambda v: v if isinstance(v, str) else "")
def test_a_flag_has_a_no_twin_only_where_it_is_a_pair(name, command):
    for param in command.params:
        if getattr(param, "secondary_opts", None):
            assert set(param.opts) <= PAIRED_FLAGS, f"{name}: {param.opts} has {param.secondary_opts}"


def test_a_usage_error_the_option_parser_raises_still_points_at_its_command_help():
    result = CliRunner().invoke(app, ["predict", "m.onnx", "images", "--top-k"])
    assert result.exit_code == 2 and "(see edgecnn predict --help)" in result.output, result.output


def test_a_stdout_that_cannot_write_unicode_still_gets_the_table_and_the_help(linear_model, image_folder):
    import os

    model, images = linear_model, image_folder
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    for argv in (["predict", str(model), str(images), "--device", "cpu"], ["predict", "--help"]):
        done = subprocess.run(
            [sys.executable, "-m", "edgecnn", *argv], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        assert done.stdout.strip()
