r"""The tour notebook (`notebooks/tour.ipynb`): run from a clean kernel and stored with its outputs, or checked.

    python -m experiments.notebook                                 # re-run it in place: what GitHub and Colab show
    python -m experiments.notebook --quick --out=/tmp/tour.ipynb   # the same cells on tiny budgets (the tests')
    python -m experiments.notebook --check                         # are the stored outputs those of its code?

Every cell runs in a fresh Jupyter kernel (nbclient), in a temporary folder.
`--quick` sets `CNN_JAX_TOUR_QUICK=1` in the kernel's environment, which the
notebook's first cell reads to shorten every training; the code is the stored
code either way. A cell that fails stops the run with that cell's error, and
nothing is written. The stored notebook records, in its metadata, a digest of
the code that made its outputs, which `--check` (and the test suite) compares
with its code: a notebook edited and not re-run fails the check.
"""

import hashlib
import json
import os
import sys
import tempfile

from absl import flags

from cnn_jax.errors import UserError
from experiments import cli

NOTEBOOK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks", "tour.ipynb")
QUICK_VARIABLE = "CNN_JAX_TOUR_QUICK"  # The notebook's first cell reads it.
MAX_BYTES = 1_500_000  # The stored notebook, outputs included: pictures, not arrays.
MAX_PICTURE_BYTES = 250_000  # One picture of its outputs.

flags.DEFINE_string("notebook", NOTEBOOK, "The notebook to run or check.")
flags.DEFINE_string("out", None, "Where the executed notebook goes (default: over --notebook; required with --quick).")
flags.DEFINE_bool("quick", False, "Tiny budgets for every training (CNN_JAX_TOUR_QUICK=1): what the tests run.")
flags.DEFINE_bool("check", False, "Run nothing; check that the stored outputs come from the notebook's code, every "
                  "code cell ran without an error, and the file stays small.")
FLAGS = flags.FLAGS


def code_cells(notebook) -> list[str]:
    """The sources of the notebook's code cells, in order."""
    return [cell["source"] for cell in notebook["cells"] if cell["cell_type"] == "code"]


def code_digest(notebook) -> str:
    """SHA-256 of the notebook's code: what the stored outputs are checked against."""
    return hashlib.sha256(json.dumps(code_cells(notebook)).encode()).hexdigest()


def _jupyter():
    """nbformat and nbclient; UserError saying how to install them where they are missing."""
    try:
        import nbclient
        import nbformat
    except ImportError:
        raise UserError('running the notebook needs nbclient and ipykernel: pip install -e ".[notebook]" (bash '
                        "setup.sh installs them)") from None
    return nbformat, nbclient


def read(path: str):
    nbformat, _ = _jupyter()

    try:
        return nbformat.read(path, as_version=4)
    except FileNotFoundError:
        raise UserError(f"`notebook`={path} does not exist") from None
    except (OSError, ValueError) as e:
        raise UserError(f"`notebook`={path} is not a readable notebook ({e})") from None


def problems(notebook, size: int) -> list[str]:
    """What is wrong with a stored notebook's outputs: empty when they are a full run of its code."""
    found = []
    stamp = notebook["metadata"].get("cnn_jax", {})
    if stamp.get("code_digest") != code_digest(notebook):
        found.append("its code changed since its outputs were made (or it was never run by this command)")
    if stamp.get("quick", True):
        found.append("its outputs come from a --quick run")
    cells = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    counts = [cell.get("execution_count") for cell in cells]
    if counts != list(range(1, len(cells) + 1)):
        found.append(f"its code cells did not run once each, in order (execution counts {counts})")
    for number, cell in enumerate(cells, 1):
        if any(output["output_type"] == "error" for output in cell.get("outputs", [])):
            found.append(f"code cell {number} stored an error")
        for output in cell.get("outputs", []):
            picture = output.get("data", {}).get("image/png", "")
            if len(picture) * 3 // 4 > MAX_PICTURE_BYTES:
                found.append(f"code cell {number} holds a picture of {len(picture) * 3 // 4:,} bytes "
                             f"(at most {MAX_PICTURE_BYTES:,})")
    if size > MAX_BYTES:
        found.append(f"it takes {size:,} bytes (at most {MAX_BYTES:,})")
    return found


def execute(notebook, quick: bool):
    """The notebook with every cell run in order from a fresh kernel, in a temporary folder."""
    _, nbclient = _jupyter()
    os.environ[QUICK_VARIABLE] = "1" if quick else ""
    with tempfile.TemporaryDirectory(prefix="cnn_jax_notebook-") as folder:
        client = nbclient.NotebookClient(notebook, timeout=3600, kernel_name="python3",
                                         resources={"metadata": {"path": folder}})
        try:
            client.execute()
        except nbclient.exceptions.CellExecutionError as e:
            print(e, file=sys.stderr)
            raise UserError(f"a cell of {FLAGS.notebook} failed ({e.ename}: {e.evalue}); its traceback is above"
                            ) from None
    notebook["metadata"]["cnn_jax"] = {"code_digest": code_digest(notebook), "quick": quick}
    return notebook


def write(notebook, path: str) -> None:
    """`notebook` at `path`, whole or not at all."""
    nbformat, _ = _jupyter()
    temporary = f"{path}.partial"
    try:
        nbformat.write(notebook, temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def main(argv: list[str]) -> None:
    del argv
    notebook = read(FLAGS.notebook)
    if FLAGS.check:
        found = problems(notebook, os.path.getsize(FLAGS.notebook))
        if found:
            raise UserError(f"{FLAGS.notebook}: {'; '.join(found)}; run python -m experiments.notebook to store a "
                            "fresh run")
        print(f"{FLAGS.notebook}: its outputs come from its code ({len(code_cells(notebook))} code cells, "
              f"{os.path.getsize(FLAGS.notebook):,} bytes)")
        return
    out = FLAGS.out or FLAGS.notebook
    if FLAGS.quick and os.path.abspath(out) == os.path.abspath(FLAGS.notebook):
        raise UserError("--quick outputs would replace the stored full run; give --out=PATH for them")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise UserError(f"`out`={out}: its folder {folder} does not exist")
    write(execute(notebook, FLAGS.quick), out)
    print(f"{out}: {len(code_cells(notebook))} code cells run{' (quick)' if FLAGS.quick else ''}, "
          f"{os.path.getsize(out):,} bytes")


if __name__ == "__main__":
    cli.run(main, usage="python -m experiments.notebook [--quick --out=PATH] [--check]")
