"""Fault injection into tiny training runs: kill -9, SIGTERM, a truncated image, damaged checkpoints, divergence,
a second run on a workdir in use, a lower --steps. Each interrupted run, resumed, must end bit for bit where an
uninterrupted one does (same seed, same data order)."""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from training_runs import REPO, assert_bitwise_equal, finish, generated_folder, params, run_cli, steps, wait_for

import menet_datasets
from menet_jax.io import checkpoint as ckpt
from menet_jax.train import main

STEPS = 30
COMMON = [
    "--config",
    "tiny",
    "--set",
    "val_size=4",
    "--set",
    "batch_size=2",
    "--set",
    "checkpoint_every=5",
    "--set",
    "keep_checkpoints=10",
    "--set",
    "eval_every=1000",
    "--set",
    "log_every=1",
]
ENV = {"MENET_COMPILE": "here"}  # programs from the persistent cache, and no compile child outliving a kill -9


@pytest.fixture(autouse=True)
def _compile_here(monkeypatch):
    monkeypatch.setenv("MENET_COMPILE", "here")  # the in-process runs compile as the subprocesses do


def cli_args(data, workdir, steps=STEPS, *extra):
    return [*COMMON, *extra, "--data-dir", str(data), "--workdir", str(workdir), "--steps", str(steps)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generated_folder(tmp_path_factory.mktemp("data") / "pairs")


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted run, its checkpoints every 5 steps kept."""
    workdir = tmp_path_factory.mktemp("reference")
    finish(run_cli(*cli_args(data, workdir), env=ENV), timeout=300)
    assert steps(workdir) == [5, 10, 15, 20, 25, 30]
    return workdir


def logged(workdir) -> int:
    """The last train step in the log (0 without one; a line cut short by a kill is skipped)."""
    last = 0
    try:
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("split") == "train":
            last = max(last, record["step"])
    return last


def stale_writes(workdir) -> list:
    return list((workdir / "checkpoints").glob(f"*{ckpt.TMP_MARKER}*"))


def resume_in_process(data, workdir, capsys, expected_start):
    """Finish the run here (cheaper than a subprocess); returns its output."""
    assert main(cli_args(data, workdir)) == 0
    out, err = capsys.readouterr()
    assert f"trained to step {STEPS} (resumed at step {expected_start})" in out, out + err
    return out + err


def test_kill_9_at_random_points(data, reference, tmp_path, capsys):
    """Three kills, the first in the middle of a checkpoint write after the first one completed, the others at
    random times after training started; each leaves its newest complete checkpoint restorable, and the run
    resumed from it ends exact."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    workdir, left_stale = tmp_path / "w", False
    for trial in range(3):
        before = logged(workdir)
        process = run_cli(*cli_args(data, workdir), env=ENV)
        if trial == 0:
            # a write in flight after one complete checkpoint: the kill must not lose the complete one
            assert wait_for(
                lambda: (workdir / "checkpoints").is_dir() and steps(workdir) and stale_writes(workdir),
                process,
                timeout=240,
            ), "no second checkpoint write seen"
        else:
            assert wait_for(lambda: logged(workdir) > before, process, timeout=240), "training did not start"
            time.sleep(rng.uniform(0, 1.0))
        process.kill()
        out = process.communicate(timeout=60)[0]
        if left_stale:
            assert "note: removed" in out, out
        left_stale = bool(stale_writes(workdir))
        assert steps(workdir), f"trial {trial} (seed {seed}) left no complete checkpoint"
        # Each checkpoint is committed before training goes on: a kill loses at most one interval of steps.
        assert logged(workdir) - max(steps(workdir)) <= 5, (trial, seed, logged(workdir), steps(workdir))
        ckpt.load_variables(workdir, max(steps(workdir)))  # the newest complete one restores
    start = max(steps(workdir))
    assert start < STEPS, f"the run finished before the last kill (seed {seed})"
    out = resume_in_process(data, workdir, capsys, start)
    assert ("note: removed" in out) == left_stale
    assert not stale_writes(workdir)
    assert_bitwise_equal(params(reference), params(workdir))
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    logged_steps = [r["step"] for r in records if r["split"] == "train"]
    assert logged_steps == sorted(set(logged_steps))  # no duplicated records after the resumes


def test_sigterm_saves_the_current_step(data, reference, tmp_path, capsys):
    workdir = tmp_path / "w"
    # No periodic checkpoint before the end: the one found afterwards is the one SIGTERM saved.
    process = run_cli(*cli_args(data, workdir, STEPS, "--set", "checkpoint_every=1000"), env=ENV)
    assert wait_for(lambda: logged(workdir) >= 3, process, timeout=240)
    process.send_signal(signal.SIGTERM)
    out = finish(process, timeout=60, code=143)
    [stopped] = steps(workdir)
    assert 3 <= stopped < STEPS
    assert out.strip().splitlines()[-1] == (
        f"interrupted at step {stopped}, checkpoint saved: rerun the same command to resume from {workdir}"
    )
    resume_in_process(data, workdir, capsys, stopped)
    assert_bitwise_equal(params(reference), params(workdir))


def first_used_at(folder, step):
    """An image of `folder` that training (the COMMON settings) reads first at `step`."""
    source = menet_datasets.FolderSource(folder)
    train, _ = menet_datasets.split(source, 4, seed=0)
    first = {}
    for s in range(step + 1):
        for j in menet_datasets.batch_indices(s, 2, len(train), seed=0, shuffle=True):
            first.setdefault(int(train.indices[j]), s)
    return next(source.pairs[i][0] for i, s in first.items() if s == step)


def test_truncated_image_mid_run_keeps_the_due_checkpoint(data, reference, tmp_path, capsys):
    """The image is met right after the checkpoint of step 10 was started: the run waits for it before exiting."""
    broken = tmp_path / "data"
    shutil.copytree(data, broken)
    image = first_used_at(broken, 10)
    intact = image.read_bytes()
    image.write_bytes(intact[: len(intact) // 2])
    workdir = tmp_path / "w"
    out = finish(run_cli(*cli_args(broken, workdir), env=ENV), timeout=300, code=2)
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(image) in errors[0] and "stopped at step 10" in errors[0], out
    assert "Traceback" not in out and "cannot schedule new futures" not in out, out
    assert steps(workdir) == [5, 10] and not stale_writes(workdir)
    assert_bitwise_equal(params(reference, 10), params(workdir, 10))
    image.write_bytes(intact)
    resume_in_process(broken, workdir, capsys, 10)
    assert_bitwise_equal(params(reference), params(workdir))


def damage(step_dir, how):
    """Truncate the largest array file, append bytes to it, delete the array metadata, or overwrite bytes of every
    array file with 0xff (NaN as float32; a decode error where the bytes are compressed)."""
    files = [p for p in (step_dir / "default").rglob("*") if p.is_file() and p.parent.name == "d"]
    largest = max(files, key=lambda p: p.stat().st_size)
    if how == "truncated":
        largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])
    elif how == "appended":  # read by offsets: the restore never looks past the arrays it knows
        largest.write_bytes(largest.read_bytes() + b"\0" * 64)
    elif how == "no_metadata":
        (step_dir / "default" / "_METADATA").unlink()
    else:  # every array file: the largest may hold only optimiser state, which weights skip
        for path in files:
            raw = bytearray(path.read_bytes())
            middle = len(raw) // 2
            raw[middle : middle + 64] = b"\xff" * 64
            path.write_bytes(bytes(raw))


def copy_until(reference, workdir, last):
    """The reference workdir as it was at step `last`."""
    shutil.copytree(reference, workdir)
    for step in steps(workdir):
        if step > last:
            shutil.rmtree(workdir / "checkpoints" / str(step))
    return workdir


def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_last_good_one(data, reference, tmp_path, capsys):
    """The disk fills up (here: a file size limit, see `run_cli`) while step 10 is saved: one line naming the
    checkpoint, the reason and the one kept; step 5 untouched, no unfinished write left, and the rerun resumes
    from it exact."""
    workdir = copy_until(reference, tmp_path / "w", 5)
    before = {p: p.read_bytes() for p in (workdir / "checkpoints" / "5").rglob("*") if p.is_file()}
    process = run_cli(*cli_args(data, workdir), env=ENV, file_size_limit=1 << 20)
    out = finish(process, timeout=300, code=2)
    errors = [line for line in out.splitlines() if line.strip()]
    assert errors == [
        f"error: {workdir.resolve()}/checkpoints/10: the checkpoint could not be written (File too large); the "
        "last good one, step 5, is kept: free space (or fix the folder) and rerun to resume"
    ], out
    assert steps(workdir) == [5] and not stale_writes(workdir)
    assert {p: p.read_bytes() for p in (workdir / "checkpoints" / "5").rglob("*") if p.is_file()} == before
    resume_in_process(data, workdir, capsys, 5)
    assert_bitwise_equal(params(reference), params(workdir))


@pytest.mark.parametrize("how", ["truncated", "no_metadata", "flipped"])
def test_load_variables_skips_a_damaged_newest_checkpoint(reference, tmp_path, capsys, how):
    workdir = copy_until(reference, tmp_path / "w", 15)
    damage(workdir / "checkpoints" / "15", how)
    variables = ckpt.load_variables(workdir)
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(
        rf"warning: checkpoint {re.escape(str(workdir.resolve()))}/checkpoints/15 is damaged "
        r"\(.+\); skipped",
        err,
    ), err
    assert_bitwise_equal(params(reference, 10), jax.tree_util.tree_leaves(variables))
    with pytest.raises(FileNotFoundError, match="is damaged"):  # an explicit step does not fall back
        ckpt.load_variables(workdir, 15)


def test_a_changed_file_that_still_restores_is_caught_by_the_manifest(reference, tmp_path, capsys):
    """Bytes appended to an array file: Orbax restores the checkpoint without noticing; its SHA-256 manifest does."""
    workdir = copy_until(reference, tmp_path / "w", 15)
    folder = workdir / "checkpoints" / "15"
    assert (folder / ckpt.MANIFEST).is_file()
    damage(folder, "appended")
    variables = ckpt.load_variables(workdir)
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(
        rf"warning: checkpoint {re.escape(str(folder.resolve()))} is damaged \(default/\S+ does not match its "
        r"SHA-256 \(changed after the save\)\); skipped",
        err,
    ), err
    assert_bitwise_equal(params(reference, 10), jax.tree_util.tree_leaves(variables))
    (folder / ckpt.MANIFEST).unlink()  # without it, the restore alone would take the changed checkpoint
    assert_bitwise_equal(params(reference, 15), jax.tree_util.tree_leaves(ckpt.load_variables(workdir, 15)))


def test_a_damaged_checkpoint_read_by_a_command_is_one_warning_line(reference, tmp_path, shared_data):
    """Every array file of the newest checkpoint cut short, its manifest gone (so that Orbax's restore itself meets
    the damage): its writer threads then print "Event loop is closed" thousands of times as they die. The command
    prints one warning line and goes on with the checkpoint before."""
    workdir = copy_until(reference, tmp_path / "w", 15)
    folder = workdir / "checkpoints" / "15"
    (folder / ckpt.MANIFEST).unlink()
    for path in (folder / "default").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(path.read_bytes()[:100])
    image = sorted((shared_data / "ECSSD" / "images").glob("*.jpg"))[0]
    argv = ["i", str(image), str(tmp_path / "map.png"), "--checkpoint", str(workdir), "--no-progress"]
    result = subprocess.run(
        [sys.executable, "-m", "menet_jax.predict", *argv],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: checkpoint {folder.resolve()} is damaged ("), lines[:5]
    assert (tmp_path / "map.png").is_file()


def test_resume_falls_back_from_a_damaged_checkpoint_and_cleans_stale_writes(data, reference, tmp_path, capsys):
    workdir = copy_until(reference, tmp_path / "w", 15)
    damage(workdir / "checkpoints" / "15", "truncated")
    stale = workdir / "checkpoints" / f"20{ckpt.TMP_MARKER}-1700000000"
    (stale / "default").mkdir(parents=True)
    out = resume_in_process(data, workdir, capsys, 10)
    warnings = [line for line in out.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and f"{workdir.resolve()}/checkpoints/15 is damaged" in warnings[0], out
    assert f"moved to {workdir.resolve()}/damaged/15" in warnings[0]
    assert f"note: removed 1 unfinished checkpoint write(s) of an interrupted run: {stale.name}" in out
    assert not stale.exists() and (workdir / "damaged" / "15").is_dir()
    assert steps(workdir) == [5, 10, 15, 20, 25, 30]  # step 15 saved again, intact
    assert_bitwise_equal(params(reference), params(workdir))


def test_divergence_stops_before_a_non_finite_save(tmp_path, capsys):
    """The learning rate jumps to 5e28 at step 6; logs every 100 steps, checkpoints every 2 with 2 kept."""
    workdir = tmp_path / "w"
    argv = [
        "--config",
        "tiny",
        "--workdir",
        str(workdir),
        "--steps",
        "30",
        "--set",
        "lr_boundaries=6",
        "--set",
        "lr_decay=1e30",
        "--set",
        "log_every=100",
        "--set",
        "checkpoint_every=2",
        "--set",
        "keep_checkpoints=2",
        "--set",
        "eval_every=1000",
        "--set",
        "train_size=16",
        "--no-progress",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and re.fullmatch(
        r"error: training diverged: .* not finite at step \d+; last good "
        r"checkpoint: step 6 .*",
        err,
    ), err
    assert steps(workdir) == [4, 6]
    for step in steps(workdir):
        assert all(np.isfinite(x).all() for x in params(workdir, step))


def test_a_second_run_on_a_workdir_in_use_is_refused(data, tmp_path, capsys):
    workdir = tmp_path / "w"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from menet_jax.io.checkpoint import lock_workdir; "
            "lock = lock_workdir(sys.argv[1]); print('locked', flush=True); sys.stdin.read()",
            str(workdir),
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(cli_args(data, workdir)) == 2
        err = capsys.readouterr().err.strip()
        assert err == (
            f"error: {workdir.resolve()} is in use by another training run (pid {holder.pid}): wait "
            "for it to end or use another --workdir"
        )
        assert not (workdir / "checkpoints").exists() and not (workdir / "config.json").exists()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    ckpt.lock_workdir(workdir).close()  # a dead holder's lock is gone


def test_fewer_steps_than_done_reports_and_changes_nothing(data, reference, tmp_path, capsys):
    workdir = tmp_path / "w"
    shutil.copytree(reference, workdir)
    before = [(workdir / name).read_text() for name in ("config.json", "metrics.jsonl")]
    assert main(cli_args(data, workdir, 20)) == 0
    out, err = capsys.readouterr()
    assert out == "" and err == (
        f"note: {workdir.resolve()} is at step 30, past steps=20: nothing trained, its "
        "config.json kept (give --steps 31 or more to go on)\n"
    )
    assert [(workdir / name).read_text() for name in ("config.json", "metrics.jsonl")] == before
    assert steps(workdir) == [5, 10, 15, 20, 25, 30]
    ckpt.lock_workdir(workdir).close()  # the run released its lock
