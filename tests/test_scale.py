"""Scale out and survive: data parallelism over devices and processes, checkpoint-resume, determinism, bad input.

Runs use the small synthetic dataset (300 training images, batches of 40: 7
steps an epoch) through `python -m experiments.fashion`, as a user runs it;
the several-device runs against one device also use the real Fashion-MNIST at
batch 128. Every test that trains is in the full suite only (`slow`).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from cnn_jax import models
from cnn_jax.kernels import ffi
from cnn_jax.training import checkpoint, steps
from cnn_jax.training.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = ("--epochs=3", "--batch_size=40", "--eval_batch_size=40", "--checkpoint_every=2", "--seed=5")
TIMING = ("train_seconds", "train_examples_per_second", "compile_seconds", "wall_seconds")


def start(workdir, data_dir, *flags, devices=1):
    environment = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    return subprocess.Popen([sys.executable, "-m", "experiments.fashion", f"--workdir={workdir}",
                             f"--data_dir={data_dir}", *RUN, *flags], cwd=ROOT, env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process):
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


def run(workdir, data_dir, *flags, devices=1):
    return finish(start(workdir, data_dir, *flags, devices=devices))


def outcome(workdir, image_shape=(28, 28, 1), num_classes=10):
    """(metrics.jsonl text, results.json without timing, final parameters) of a finished run."""
    results = json.loads((workdir / "results.json").read_text())
    target = steps.create_train_state(models.ConvNet(num_classes=num_classes), Config(), image_shape)
    params = checkpoint.restore(str(workdir), target).params
    return (workdir / "metrics.jsonl").read_text(), {k: v for k, v in results.items() if k not in TIMING}, params


def assert_same_params(a, b):
    assert jax.tree.all(jax.tree.map(lambda x, y: bool((np.asarray(x) == np.asarray(y)).all()), a, b))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from conftest import write_idx_dataset

    return write_idx_dataset(str(tmp_path_factory.mktemp("idx")))


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """An uninterrupted run, and the data it used."""
    workdir = tmp_path_factory.mktemp("reference")
    code, _, err = run(workdir, data_dir)
    assert code == 0, err
    return data_dir, outcome(workdir)


@pytest.mark.slow
def test_two_runs_of_one_config_write_identical_metrics(reference, tmp_path):
    data_dir, (metrics, results, params) = reference
    code, _, err = run(tmp_path, data_dir)
    assert code == 0, err
    again = outcome(tmp_path)
    assert again[0] == metrics and again[1] == results
    assert_same_params(again[2], params)


def _wait_for_checkpoint(workdir, step, process, timeout=120):
    """Returns once `workdir` holds a checkpoint at `step` or later (the run still going)."""
    deadline, folder = time.monotonic() + timeout, workdir / "checkpoints"
    while not any(name.isdigit() and int(name) >= step for name in (os.listdir(folder) if folder.exists() else [])):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.005)


@pytest.mark.slow
@pytest.mark.parametrize("step, delay", [(2, 0.0), (14, 0.0), (16, 0.03)])
def test_a_run_killed_at_any_moment_resumes_to_the_same_end(reference, tmp_path, step, delay):
    # SIGKILL at moments of the 21-step run: while training, evaluating (the second epoch ends at 14) or saving.
    data_dir, expected = reference
    process = start(tmp_path, data_dir)
    _wait_for_checkpoint(tmp_path, step, process)
    time.sleep(delay)
    process.kill()
    process.wait()
    code, out, err = run(tmp_path, data_dir)
    assert code == 0, err
    metrics, results, params = outcome(tmp_path)
    assert (metrics, results) == expected[:2]
    assert_same_params(params, expected[2])


FOLDER = ("--dataset=folder", "--image_size=16")  # Streamed: Grain's threads decode, crop and resize each file.


@pytest.fixture(scope="module")
def folder_reference(tmp_path_factory):
    """An uninterrupted streamed run on a folder of 200 images of 3 sizes (160 for training: 4 steps an epoch)."""
    from conftest import write_image_folder

    folder = tmp_path_factory.mktemp("photos")
    write_image_folder(folder, per_class=100)
    workdir = tmp_path_factory.mktemp("folder_reference")
    code, _, err = run(workdir, folder, *FOLDER)
    assert code == 0, err
    return folder, outcome(workdir, (16, 16, 3), 2)


@pytest.mark.slow
def test_a_streamed_run_killed_mid_way_resumes_to_the_same_end(folder_reference, tmp_path):
    folder, expected = folder_reference
    process = start(tmp_path, folder, *FOLDER)
    _wait_for_checkpoint(tmp_path, 6, process)
    time.sleep(0.01)
    process.kill()
    process.wait()
    code, out, err = run(tmp_path, folder, *FOLDER)
    assert code == 0 and "resuming at step" in out, err
    metrics, results, params = outcome(tmp_path, (16, 16, 3), 2)
    assert (metrics, results) == expected[:2]
    assert_same_params(params, expected[2])


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly_then_resumes(reference, tmp_path):
    data_dir, expected = reference
    process = start(tmp_path, data_dir)
    _wait_for_checkpoint(tmp_path, 2, process)
    process.send_signal(signal.SIGTERM)
    code, _, err = finish(process)
    assert code == 0 and "stopped by SIGTERM at step" in err and "run the same command to resume" in err, err
    step = int(err.split("stopped by SIGTERM at step ")[1].split(";")[0])
    assert os.path.isdir(tmp_path / "checkpoints" / str(step)) and not (tmp_path / "results.json").exists()
    code, out, err = run(tmp_path, data_dir)
    assert code == 0 and f"resuming at step {step}" in out, err
    assert outcome(tmp_path)[:2] == expected[:2]


@pytest.mark.slow
def test_a_half_written_checkpoint_is_ignored(reference, tmp_path):
    data_dir, expected = reference
    code, _, err = run(tmp_path, data_dir, "--max_steps=4")  # Not the same config: resume it with the change allowed.
    assert code == 0, err
    (tmp_path / "results.json").unlink()
    debris = tmp_path / "checkpoints" / "6.orbax-checkpoint-tmp-1234567"
    debris.mkdir()
    (debris / "junk").write_text("half a checkpoint")
    code, out, err = run(tmp_path, data_dir, "--allow_config_change")
    assert code == 0 and "resuming at step 4" in out, err


def _one_line_error(code, err, *parts):
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    for part in parts:
        assert part in err, err


@pytest.mark.slow
def test_a_workdir_of_another_config_is_refused_and_left_alone(reference, tmp_path):
    data_dir, _ = reference
    assert run(tmp_path, data_dir, "--max_steps=2")[0] == 0
    (tmp_path / "results.json").unlink()
    before = sorted(os.listdir(tmp_path)), (tmp_path / "metrics.jsonl").read_text()
    _one_line_error(*run(tmp_path, data_dir, "--max_steps=2", "--learning_rate=0.01")[::2],
                    "holds a run with another config (learning_rate: 0.001 there, 0.01 here)", "--allow_config_change")
    assert (sorted(os.listdir(tmp_path)), (tmp_path / "metrics.jsonl").read_text()) == before


@pytest.mark.slow
def test_a_checkpoint_of_another_model_is_refused(reference, tmp_path):
    data_dir, _ = reference
    assert run(tmp_path, data_dir, "--max_steps=2")[0] == 0
    (tmp_path / "results.json").unlink()
    _one_line_error(*run(tmp_path, data_dir, "--model=lenet5", "--allow_config_change")[::2],
                    "the checkpoint at step 2", "does not fit this model")


@pytest.mark.slow
def test_a_finished_run_is_refused(reference, tmp_path):
    data_dir, _ = reference
    assert run(tmp_path, data_dir, "--max_steps=1")[0] == 0
    _one_line_error(*run(tmp_path, data_dir, "--max_steps=1")[::2], "holds a finished run")


def test_an_unwritable_workdir_is_refused(data_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    _one_line_error(*run(blocker / "run", data_dir)[::2], "is not writable")


@pytest.mark.slow
def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(reference, tmp_path):
    data_dir, _ = reference
    code, _, err = run(tmp_path, data_dir, "--learning_rate=1e30", "--loss=l2", "--checkpoint_every=1")
    _one_line_error(code, err, "training diverged: the loss is", "lower --learning_rate")
    step = int(err.split(" at step ")[1].split(";")[0])
    good = int(err.split("last good checkpoint (step ")[1].split(")")[0])
    assert good == step - 1 and sorted(int(n) for n in os.listdir(tmp_path / "checkpoints"))[-1] == good
    target = steps.create_train_state(models.ConvNet(), Config(), (28, 28, 1))
    restored = checkpoint.restore(str(tmp_path), target)
    assert int(restored.step) == good and all(np.isfinite(x).all() for x in jax.tree.leaves(restored.params))
    assert not (tmp_path / "results.json").exists()


def assert_close_curves(metrics, expected, rtol=2e-4):
    """Two metrics.jsonl texts: the same steps, and every loss and accuracy equal to `rtol`."""
    lines, expected = ([json.loads(line) for line in text.splitlines()] for text in (metrics, expected))
    assert [line["step"] for line in lines] == [line["step"] for line in expected]
    for name in ("train_loss", "test_loss", "train_accuracy", "test_accuracy"):
        np.testing.assert_allclose([line[name] for line in lines], [line[name] for line in expected], rtol=rtol)


@pytest.mark.slow
def test_eight_devices_follow_the_one_device_loss_curve(reference, tmp_path):
    data_dir, (metrics, results, params) = reference
    code, _, err = run(tmp_path, data_dir, devices=8)
    assert code == 0, err
    # Each device's kernels sum its share of the batch, and the shares are added: float32 rounding in another
    # order, compounded over 21 Adam steps (measured: up to 2.9e-4 apart).
    assert_close_curves((tmp_path / "metrics.jsonl").read_text(), metrics, rtol=1e-3)
    assert len(json.loads((tmp_path / "results.json").read_text())["devices"]) == 8


def test_a_batch_that_does_not_split_over_the_devices_is_refused(data_dir, tmp_path):
    _one_line_error(*run(tmp_path / "run", data_dir, "--batch_size=36", devices=8)[::2],
                    "--batch_size=36 does not split evenly over 8 devices; use a multiple of 8 such as 32 or 40")
    assert not (tmp_path / "run").exists()


def _processes(workdir, flags, devices: int, processes: int):
    """Starts `processes` processes of `python -m experiments.fashion` (`devices` CPU devices each) as one run."""
    environment = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    joint = [f"--coordinator_address=localhost:{_free_port()}", f"--num_processes={processes}"] if processes > 1 else []
    return [subprocess.Popen([sys.executable, "-m", "experiments.fashion", f"--workdir={workdir}", *flags, *joint,
                              *([f"--process_id={i}"] if processes > 1 else [])], cwd=ROOT, env=environment,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(processes)]


# Real-size batches of the real Fashion-MNIST (Debian's dataset-fashion-mnist, which setup.sh installs): the
# command that aborted with cnn_jax's kernels on several devices before they ran on each device's share.
REAL_SIZE = ("--max_steps=100", "--batch_size=128", "--max_test_examples=2000", "--checkpoint_every=0")


@pytest.fixture(scope="module")
def one_device_at_real_size(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("one_device")
    (process,) = _processes(workdir, REAL_SIZE, devices=1, processes=1)
    code, _, err = finish(process)
    assert code == 0, err
    return json.loads((workdir / "results.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("devices, processes", [(8, 1), (2, 2)])
def test_real_size_runs_on_several_devices_match_one_device_with_debian_fashion_mnist_and_onednn(
        one_device_at_real_size, tmp_path, devices, processes):
    outputs = [finish(process) for process in _processes(tmp_path, REAL_SIZE, devices, processes)]
    assert all(code == 0 for code, _, _ in outputs), [err for _, _, err in outputs]
    # Only process 0 reports and writes (orbax's checkpoints aside).
    assert "test accuracy" in outputs[0][1] and all("test accuracy" not in out and not err.strip()
                                                    for _, out, err in outputs[1:])
    results, one = json.loads((tmp_path / "results.json").read_text()), one_device_at_real_size
    assert results["compiled_kernels"] and one["compiled_kernels"], ffi.INSTALL
    assert len(results["devices"]) == devices * processes and results["processes"] == processes
    assert results["steps"] == one["steps"] == 100
    # Measured: test losses within 8e-5 (relative) of one device's 0.5531 on 2,000 test images.
    assert results["test_loss"] == pytest.approx(one["test_loss"], rel=1e-3)
    assert results["train_loss"] == pytest.approx(one["train_loss"], rel=1e-3)


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_the_newest_checkpoint_is_the_highest_complete_step(tmp_path):
    assert checkpoint.newest_step(str(tmp_path)) is None
    for name in ("4", "12", "16.orbax-checkpoint-tmp-1733061234"):  # The last one half-written.
        (tmp_path / checkpoint.CHECKPOINT_DIR / name).mkdir(parents=True)
    assert checkpoint.newest_step(str(tmp_path)) == 12
