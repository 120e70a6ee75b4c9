"""The notebooks in notebooks/: committed without outputs, in sync with their generator, and executed top to
bottom in smoke mode (MENET_SMOKE=1: tiny network, a handful of real images, a few steps) on the CPU.

Each notebook runs in a fresh python3 kernel of this interpreter, with the notebooks folder as working directory
and its outputs in a temporary folder (MENET_WORK); the checks read the files it wrote and the numbers it printed.
"""

import json
import math
import os
import re
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = REPO / "notebooks"
CELL_TIMEOUT = 420  # seconds; the first cell that compiles the train step takes about a minute on 2 cores


def notebook_paths():
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def test_notebooks_are_stripped_and_match_their_generator():
    sys.path.insert(0, str(NOTEBOOKS))
    try:
        import make_notebooks
    finally:
        sys.path.remove(str(NOTEBOOKS))
    assert sorted(make_notebooks.NOTEBOOKS) == [p.name for p in notebook_paths()]
    assert make_notebooks.main(["--check"]) == 0
    for path in notebook_paths():
        notebook = nbformat.read(path, as_version=4)
        first = notebook.cells[1]
        assert first.cell_type == "code" and "pip" in first.source and 'find_spec("menet_jax")' in first.source
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: outputs committed"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, shared_data):
    """Environment of a CI run: smoke mode, the real data, the package importable, a python3 kernel of this
    interpreter (a kernelspec in a private JUPYTER_PATH shadows any other installed one). One work folder for
    the module, as for a user: the smoke checkpoint the first notebook trains is reused by the others."""
    root = tmp_path_factory.mktemp("notebooks")
    kernel_dir = root / "jupyter" / "kernels" / "python3"
    kernel_dir.mkdir(parents=True)
    (kernel_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3",
                "language": "python",
            }
        )
    )
    work = root / "work"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(root / "jupyter"))
        patch.setenv("MENET_SMOKE", "1")
        patch.setenv("MENET_WORK", str(work))
        patch.setenv("MENET_DATA_DIR", str(shared_data))
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        patch.setenv("MPLBACKEND", "Agg")
        yield work


def execute(name: str) -> str:
    """Run notebooks/NAME in smoke mode; returns everything its cells printed."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    started = time.perf_counter()
    client.execute()
    print(f"{name}: {time.perf_counter() - started:.0f} s; cells:", slowest_cells(notebook))
    return "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream"
    )


def slowest_cells(notebook, n=3) -> str:
    from datetime import datetime

    times = []
    for i, cell in enumerate(notebook.cells):
        stamps = cell.metadata.get("execution", {})
        if "iopub.execute_input" in stamps and "shell.execute_reply" in stamps:
            start, end = (
                datetime.fromisoformat(stamps[k].replace("Z", "+00:00"))
                for k in ("iopub.execute_input", "shell.execute_reply")
            )
            times.append(((end - start).total_seconds(), i))
    return ", ".join(f"#{i} {t:.0f} s" for t, i in sorted(times, reverse=True)[:n])


def numbers(pattern: str, text: str):
    found = [float(v) for v in re.findall(pattern, text)]
    assert found, f"no match for {pattern!r} in:\n{text}"
    return found


def test_quickstart(smoke):
    printed = execute("01_quickstart.ipynb")
    assert "smoke mode: True" in printed
    assert (smoke / "smoke" / "checkpoints" / "4").is_dir()
    assert (smoke / "quickstart.png").stat().st_size > 10_000
    maes = numbers(r"map: mean MAE ([0-9.]+)", printed)
    f_betas = numbers(r"mean adaptive F-beta ([0-9.]+)", printed)
    assert len(maes) == 2 and all(0 <= v <= 1 for v in maes + f_betas)
    difference = numbers(r"mean \|difference\| ([0-9.]+)", printed)[0]
    assert 0 <= difference <= 1 and math.isfinite(difference)


def test_train_gpu(smoke):
    printed = execute("02_train_gpu.ipynb")
    assert "duts" in printed and "train" in printed and "12 examples" in printed
    assert re.search(r"trained steps 4\.\.6", printed), printed  # resumed after the stand-in disconnect
    run = smoke / "smoke-train"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["loss"]) for r in records if r["split"] == "train")
    validation = [r for r in records if r["split"] == "validation"]
    assert [r["step"] for r in validation] == [4, 6]
    assert 0 <= validation[-1]["metric/mae"] <= 1
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir()) == [2, 4, 6]
    assert (run / "curves.png").stat().st_size > 10_000
    assert "parameters:" in printed


def test_evaluate(smoke):
    printed = execute("03_evaluate.ipynb")
    results = json.loads((smoke / "eval" / "results.json").read_text())["datasets"]
    assert set(results) == {"ECSSD/tiny-metric", "ECSSD/tiny-ce", "ECSSD/centre"}
    for scores in results.values():
        assert scores["n_images"] == 8
        assert all(0 <= scores[k] <= 1 for k in ("mae", "adp_f", "max_f", "s_measure", "w_f"))
    assert len((smoke / "eval" / "per_image.csv").read_text().splitlines()) == 1 + 3 * 8
    for picture in ("pr_curve.png", "f_curve.png"):
        assert (smoke / "eval" / picture).stat().st_size > 5_000
    # Table I layout: one F-beta and one MAE row for the dataset, matching results.json.
    row = re.search(r"ECSSD\s+F-beta\s+([0-9.\s]+)\n\s+MAE\s+([0-9.\s]+)", printed)
    assert row, printed
    columns = sorted(key.split("/", 1)[1] for key in results)
    f_row, mae_row = ([float(v) for v in group.split()] for group in row.groups())
    assert f_row == pytest.approx([results[f"ECSSD/{c}"]["adp_f"] for c in columns], abs=1e-4)
    assert mae_row == pytest.approx([results[f"ECSSD/{c}"]["mae"] for c in columns], abs=1e-4)


def test_robustness(smoke):
    printed = execute("04_robustness.ipynb")
    out = smoke / "robustness"
    for kind in ("awgn", "jpeg"):
        assert "random" in (out / kind / "robustness.json").read_text()
        assert (out / kind / "curves.png").stat().st_size > 10_000
        table = (out / kind / "table.md").read_text()
        assert "F-beta" in table and "random" in table and len(table.splitlines()) >= 2 * (2 + 7)
    ours = json.loads((out / "jacobian" / "jacobian.json").read_text())["datasets"]["ECSSD"]
    authors = json.loads((out / "jacobian-authors" / "jacobian.json").read_text())["datasets"]["ECSSD"]
    assert ours["summary"]["n_images"] == 1 and len(ours["images"]) == 1
    ours_max, authors_max = ours["summary"]["gradient"]["max"], authors["summary"]["gradient"]["max"]
    assert math.isfinite(ours_max) and ours_max > 0
    # The authors' objective is a constant: what remains of its gradient is round-off, far below the real one.
    assert authors_max < 1e-3 * ours_max
    assert ours["summary"]["spectral"]["mean"] > 0 and ours["summary"]["frobenius"]["mean"] > 0
    assert set(ours["summary"]["eq12"]) >= {"gaussian", "awgn"}
    assert numbers(r"salient probability \(eval mode\) ([0-9.e+-]+)", printed)[0] == pytest.approx(ours_max, rel=1e-3)
    lipschitz = json.loads((out / "lipschitz.json").read_text())["outputs"]
    assert "salient_prob" in (out / "report" / "report.md").read_text()
    bounds = lipschitz["salient_prob"]
    assert bounds["bounded"] and 0 < bounds["layerwise_certified"] < math.inf
    assert 0 < bounds["elementwise_estimate"] <= bounds["elementwise_certified"] * (1 + 1e-6)
