"""The tour notebook: stored with the outputs of its own code, run from a clean kernel, linked from the README."""

import json
import os
import re
import subprocess
import sys

import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "tour.ipynb")


def _notebook_command(*flags, timeout=60):
    return subprocess.run([sys.executable, "-m", "experiments.notebook", *flags], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def _code(notebook) -> list[str]:
    return [cell.source for cell in notebook.cells if cell.cell_type == "code"]


def _assert_plots_shown(notebook) -> None:
    """Every cell that shows a plot holds its picture: the library's own drawing (to files) must not switch the
    notebook's plots off."""
    for cell in notebook.cells:
        if "plt.show()" in cell.source:
            assert any("image/png" in output.get("data", {}) for output in cell.outputs), cell.source[:80]


def test_the_stored_outputs_come_from_the_stored_code():
    result = _notebook_command("--check")
    assert result.returncode == 0, result.stderr
    assert "its outputs come from its code" in result.stdout


def test_the_stored_notebook_shows_its_pictures_and_no_error():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    assert sum("image/png" in output.get("data", {}) for output in outputs) >= 10  # Curve, inspection, fine-tuning, sweep.
    _assert_plots_shown(notebook)
    text = "".join(output.get("text", "") for output in outputs)
    assert re.search(r"epoch 3: train loss [\d.]+ acc [\d.]+ \| test loss [\d.]+ acc 0\.(8[5-9]|9)", text), \
        "the stored run's third epoch should reach at least 85% on the test images"


def test_check_refuses_a_notebook_edited_after_its_run(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    next(cell for cell in notebook.cells if cell.cell_type == "code").source += "\nprint('edited')"
    edited = tmp_path / "edited.ipynb"
    nbformat.write(notebook, edited)
    result = _notebook_command("--check", f"--notebook={edited}")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "its code changed since its outputs were made" in result.stderr


def test_quick_outputs_never_replace_the_stored_run():
    result = _notebook_command("--quick")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "--out=PATH" in result.stderr


def test_the_readme_opens_the_notebook_on_colab_from_the_repository_it_installs_from():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    repository = re.search(r'REPOSITORY = "https://github\.com/([^"]+)"', _code(notebook)[0])[1]
    colab = f"https://colab.research.google.com/github/{repository}/blob/main/notebooks/tour.ipynb"
    with open(os.path.join(ROOT, "README.md")) as f:
        assert colab in f.read()
    assert colab in notebook.cells[0].source
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        assert f'Repository = "https://github.com/{repository}"' in f.read()


def test_nothing_in_the_notebook_asks_for_the_cpu_kernels():
    """On a GPU or TPU runtime the layers run on XLA (dispatch picks kernels on the CPU backend only); the
    notebook must not call them itself."""
    code = "\n".join(_code(nbformat.read(NOTEBOOK, as_version=4)))
    assert "kernels" not in code and "ffi" not in code


@pytest.mark.slow
def test_the_notebook_runs_from_a_clean_kernel(tmp_path):
    out = tmp_path / "tour.ipynb"
    result = _notebook_command("--quick", f"--out={out}", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    executed, stored = nbformat.read(out, as_version=4), nbformat.read(NOTEBOOK, as_version=4)
    assert _code(executed) == _code(stored)  # What the tests run is what the notebook stores.
    assert executed.metadata["cnn_jax"]["quick"] is True
    cells = [cell for cell in executed.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in cells] == list(range(1, len(cells) + 1))
    assert all(cell.outputs for cell in cells), "every code cell shows something"
    _assert_plots_shown(executed)
    printed = json.dumps([cell.outputs for cell in cells])
    assert "backend cpu:" in printed


def test_a_failing_cell_stops_the_run_with_one_line_and_writes_nothing(tmp_path):
    broken = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('first')"),
                                             nbformat.v4.new_code_cell("raise ValueError('the second cell fails')")])
    broken.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(broken, tmp_path / "broken.ipynb")
    out = tmp_path / "out.ipynb"
    result = _notebook_command(f"--notebook={tmp_path / 'broken.ipynb'}", f"--out={out}")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith("error: a cell of ")
    assert "ValueError: the second cell fails" in result.stderr.splitlines()[-1]
    assert not out.exists() and not os.path.exists(f"{out}.partial")
