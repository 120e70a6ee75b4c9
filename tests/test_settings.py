"""The house rules that code can check: environment variables read in one module and validated, one error family
turned into one line and exit 2 by one runner, the console scripts, and what each layer may import."""

import configparser
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import one_line_error

import menet_datasets
from menet_jax import cli, errors
from menet_jax.runtime import compilation, settings

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "name, read, allowed",
    [
        ("MENET_COMPILE", settings.compile_place, "auto, child, here"),
        ("MENET_MALLOC", settings.malloc, "reuse, default"),
    ],
)
def test_a_setting_outside_its_values_is_a_one_line_error_listing_them(monkeypatch, name, read, allowed):
    monkeypatch.setenv(name, "  ")
    assert read() == allowed.split(", ")[0]  # blank: the default
    monkeypatch.setenv(name, allowed.split(", ")[-1].upper())
    assert read() == allowed.split(", ")[-1]  # case and spaces do not matter
    monkeypatch.setenv(name, "sometimes")
    with pytest.raises(errors.SettingsError, match=f"^{name} must be one of {allowed}, got 'sometimes'$"):
        read()


def test_distributed_settings_are_integers():
    assert settings.distributed({}) == {"coordinator": None, "num_processes": None, "process_id": None}
    assert settings.distributed(
        {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    ) == {"coordinator": "h:1", "num_processes": 2, "process_id": 1}
    with pytest.raises(errors.SettingsError, match="^JAX_NUM_PROCESSES must be an integer, got 'two'$"):
        settings.distributed({"JAX_NUM_PROCESSES": "two"})


def test_compile_place_reads_its_setting_when_called(monkeypatch):
    monkeypatch.setenv("MENET_COMPILE", "here")
    assert compilation.compile_place() == "here"
    assert compilation.compile_place("child") == "child"  # an argument wins over the environment
    with pytest.raises(errors.SettingsError, match="place must be one of auto, child, here"):
        compilation.compile_place("elsewhere")


def test_only_the_settings_module_reads_the_environment():
    """`grep -rln os.environ menet_jax robustness datasets` finds runtime/settings.py alone (the datasets package
    reads none): every other module asks it, so no variable is read at trace time."""
    readers = sorted(
        str(p.relative_to(REPO))
        for package in ("menet_jax", "robustness", "datasets")
        for p in (REPO / package).rglob("*.py")
        if "os.environ" in p.read_text() or "getenv(" in p.read_text()
    )
    assert readers == ["menet_jax/runtime/settings.py"]


def test_every_project_error_is_a_menet_error():
    from robustness.compare import CompareError
    from robustness.lipschitz import LipschitzError
    from robustness.report import ReportError

    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, Exception)]
    assert len(classes) >= 10
    for cls in [*classes, menet_datasets.DataError, CompareError, LipschitzError, ReportError]:
        assert issubclass(cls, errors.MenetError), cls
    assert errors.DataError is menet_datasets.DataError  # one class, re-exported


def test_the_cli_runner_turns_any_menet_error_into_one_line_and_exit_2(capsys):
    @cli.command(compilation_cache=False)
    def failing(argv=None):
        raise errors.WeightsError(f"{argv[0]}: checksum mismatch")

    @cli.command(compilation_cache=False)
    def crashing(argv=None):
        raise ZeroDivisionError("a bug: not hidden behind a one-line message")

    assert (
        one_line_error(capsys, "error: w.npz: checksum mismatch", run=(failing, ["w.npz"]))
        == "error: w.npz: checksum mismatch"
    )
    with pytest.raises(ZeroDivisionError):
        crashing([])
    assert cli.command(compilation_cache=False)(lambda argv=None: None)([]) == 0


def test_console_scripts_run_the_commands():
    """Every console script of setup.cfg names a function that exists; `menet-robustness` dispatches to the
    robustness commands (here through `python -m robustness`, its module form)."""
    import importlib

    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    scripts = dict(line.split(" = ") for line in config["options.entry_points"]["console_scripts"].strip().splitlines())
    assert {"menet-train", "menet-predict", "menet-evaluate", "menet-export", "menet-robustness"} <= set(scripts)
    for target in scripts.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target
    usage = subprocess.run([sys.executable, "-m", "robustness"], capture_output=True, text=True, cwd=REPO)
    assert usage.returncode == 2 and "evaluate" in usage.stderr and "lipschitz" in usage.stderr
    report = subprocess.run([sys.executable, "-m", "robustness", "report"], capture_output=True, text=True, cwd=REPO)
    assert report.returncode == 2 and report.stderr.strip() == (
        "error: nothing to report: give --lipschitz, --jacobian and/or --evaluate"
    )


def test_the_import_layers_hold():
    """The import-linter contracts of setup.cfg (layers of menet_jax; menet_datasets imports nothing of the others;
    robustness only menet_jax.api; nobody but the training entry point the training workflow)."""
    lint = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run([str(lint)], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0 and "0 broken" in run.stdout, run.stdout[-2000:]
