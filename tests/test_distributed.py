"""Multi-process training (`python -m menet_jax.train --coordinator ...`): two local processes with one CPU device
each, talking over gloo on 127.0.0.1, end bit for bit where one process with two devices ends.

The comparison can be bitwise: both runs split each global batch the same way (rows 0-1 on the first device, 2-3
on the second), every device runs the same partitioned program on the same rows, and a cross-device sum of two
partial values is the same in any order (a + b == b + a in floating point), so gloo's all-reduce and the in-process
one give identical results.
"""

import json
import os
import socket
import time

import pytest
from training_runs import assert_bitwise_equal, params, run_cli

ARGS = ["--config", "tiny", "--steps", "3", "--set", "val_size=4", "--set", "eval_every=1000", "--set", "log_every=1"]
TIMEOUT = 240  # seconds for all three runs together; each is killed past it


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_env(devices: int, **extra) -> dict:
    flags = " ".join(
        f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")
    )
    env = {
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={devices}".strip(),
        "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
        **extra,
    }
    for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.setdefault(key, "")  # none leaks in from the caller's environment
    return env


def finish_all(processes: dict, timeout: float) -> dict:
    """Every run's output once all have ended with status 0; all are killed if one fails or time runs out."""
    deadline, outputs = time.monotonic() + timeout, {}
    try:
        for name, process in processes.items():
            outputs[name] = process.communicate(timeout=max(1.0, deadline - time.monotonic()))[0]
            assert process.returncode == 0, f"{name} exited with {process.returncode}:\n{outputs[name]}"
    except BaseException:
        for process in processes.values():
            process.kill()
        for name, process in processes.items():
            outputs.setdefault(name, process.communicate()[0])
        raise AssertionError(
            "\n\n".join(f"--- {name} (exit {p.returncode}):\n{outputs[name][-3000:]}" for name, p in processes.items())
        ) from None
    return outputs


def train_records(workdir):
    return [
        {k: v for k, v in json.loads(line).items() if k not in ("time", "images_per_s")}
        for line in (workdir / "metrics.jsonl").read_text().splitlines()
    ]


def test_two_processes_equal_one_process_with_two_devices(tmp_path):
    single, pair = tmp_path / "single", tmp_path / "pair"
    coordinator = f"127.0.0.1:{free_port()}"
    processes = {
        "one process, two devices": run_cli(*ARGS, "--workdir", str(single), env=cpu_env(2)),
        # process 0 from the flags, process 1 from the environment variables
        "process 0": run_cli(
            *ARGS,
            "--workdir",
            str(pair),
            "--coordinator",
            coordinator,
            "--num-processes",
            "2",
            "--process-id",
            "0",
            env=cpu_env(1),
        ),
        "process 1": run_cli(
            *ARGS,
            "--workdir",
            str(pair),
            env=cpu_env(1, JAX_COORDINATOR_ADDRESS=coordinator, JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="1"),
        ),
    }
    out = finish_all(processes, TIMEOUT)
    assert "trained to step 3 in" in out["process 0"] and "trained to step 3" not in out["process 1"]
    assert_bitwise_equal(params(single), params(pair))
    # One log, written by process 0, with the single run's losses and validation scores.
    assert train_records(pair) == train_records(single)
    assert [r["step"] for r in train_records(pair)] == [1, 2, 3, 3]
    assert json.loads((pair / "config.json").read_text()) == json.loads((single / "config.json").read_text())


def test_bad_distributed_flags_are_one_line_errors(capsys):
    from menet_jax.train import main

    assert main(["--config", "tiny", "--num-processes", "2", "--process-id", "0", "--workdir", "unused"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: a multi-process run needs the coordinator's address") and "\n" not in err
    assert (
        main(
            [
                "--config",
                "tiny",
                "--coordinator",
                "127.0.0.1:1",
                "--num-processes",
                "2",
                "--process-id",
                "2",
                "--workdir",
                "unused",
            ]
        )
        == 2
    )
    assert "the process id must be in 0..1" in capsys.readouterr().err


@pytest.mark.parametrize("environ, expected", [({}, False), ({"JAX_NUM_PROCESSES": "1"}, False)])
def test_one_process_does_not_initialize(environ, expected):
    from menet_jax.training.distributed import initialize_distributed

    assert initialize_distributed(environ=environ) is expected
