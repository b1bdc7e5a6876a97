"""Using a trained network on image files: `experiments.predict` and `trained.probabilities`."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from cnn_jax import data
from cnn_jax.training import trained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_predict(*args):
    return subprocess.run([sys.executable, "-m", "experiments.predict", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_files_are_predicted_as_evaluation_sees_the_same_images_and_a_bad_one_is_named(tiny_run, tmp_path):
    run = trained.load(tiny_run)
    images = run.dataset.test_images[:3]
    folder = tmp_path / "photos"
    folder.mkdir()
    for k, image in enumerate(images):  # At the run's size: the conversion keeps every pixel.
        Image.fromarray(image[..., 0]).save(folder / f"{k}.png")
    (folder / "notes.txt").write_text("not an image")  # Not an image suffix: a folder's other files are left out.
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    result = run_predict(f"--workdir={tiny_run}", str(folder), str(broken), "--json", "--top_k=2")
    assert result.returncode == 2
    assert result.stderr == (f"error: cannot read image file {broken} (UnidentifiedImageError); give a JPEG, PNG or "
                             "another format Pillow reads; the other 3 file(s) were predicted\n")
    output = json.loads(result.stdout)
    assert [p["file"] for p in output["predictions"]] == [str(folder / f"{k}.png") for k in range(3)]
    assert output["unreadable"][0]["file"] == str(broken) and output["step"] == run.step
    logits = jax.jit(run.model.apply)(run.variables, data.normalize(images))  # What evaluation computes.
    probabilities = np.asarray(jax.nn.softmax(logits))
    for prediction, expected in zip(output["predictions"], probabilities, strict=True):
        assert [c["index"] for c in prediction["classes"]] == list(np.argsort(-expected)[:2])
        np.testing.assert_allclose([c["probability"] for c in prediction["classes"]],
                                   np.sort(expected)[::-1][:2], rtol=1e-5)
        assert prediction["classes"][0]["class"] == run.dataset.class_names[int(np.argmax(expected))]
    np.testing.assert_allclose(trained.probabilities(run, images, batch_size=2), probabilities, rtol=1e-5)


@pytest.mark.slow  # Five commands; the test above runs the same code.
def test_lines_for_people_and_one_line_errors(tiny_run, tmp_path):
    picture = tmp_path / "big.png"
    Image.fromarray(np.full((90, 60, 3), 200, np.uint8)).save(picture)  # Another size, in colour.
    result = run_predict(f"--workdir={tiny_run}", str(picture), "--top_k=1")
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    name, probability = line.removeprefix(f"{picture}: ").rsplit(" ", 1)
    assert name in trained.load(tiny_run).dataset.class_names and 0 < float(probability) <= 1
    (tmp_path / "empty").mkdir()
    for args, message in (((f"--workdir={tiny_run}",), "error: usage: python -m experiments.predict"),
                          ((f"--workdir={tiny_run}", str(tmp_path / "empty")), "error: folder "),
                          ((str(picture),), "error: give the run to predict with: --workdir=RUN")):
        result = run_predict(*args)
        assert result.returncode == 2 and result.stderr.startswith(message) and result.stderr.count("\n") == 1


@pytest.mark.slow  # A run on a folder, then the command.
def test_files_of_other_sizes_get_the_classes_evaluation_gives_them_through_the_dataset(tmp_path):
    from conftest import write_image_folder

    from cnn_jax.data import pipeline
    from cnn_jax.training import loop
    from cnn_jax.training.config import Config

    write_image_folder(tmp_path / "photos", per_class=10, classes=("dark", "grey", "bright"))
    config = Config(dataset="folder", data_dir=str(tmp_path / "photos"), image_size="12,16", batch_size=8,
                    eval_batch_size=6, epochs=1, learning_rate=3e-3)
    loop.train_and_evaluate(config, str(tmp_path / "run"))
    run = trained.load(str(tmp_path / "run"))
    files = list(run.dataset.test_images.paths)  # 2 of each class, of several sizes, formats and modes.
    result = run_predict(f"--workdir={tmp_path / 'run'}", *files, "--json", "--top_k=3")
    assert result.returncode == 0, result.stderr
    predicted = [[c["index"] for c in p["classes"]] for p in json.loads(result.stdout)["predictions"]]
    batch = next(pipeline.evaluation_batches(run.dataset, len(files)))
    logits = np.asarray(jax.jit(run.model.apply)(run.variables, data.normalize(batch["image"])))
    assert predicted == [list(np.argsort(-row)) for row in logits]


@pytest.mark.slow  # Trains a small run of texts, then starts the command.
def test_texts_are_predicted_through_the_runs_vocabulary_and_an_empty_one_is_named(tmp_path):
    from conftest import write_reviews

    from cnn_jax.training import loop
    from cnn_jax.training.config import Config

    config = Config(dataset="text", data_dir=write_reviews(tmp_path / "reviews.csv"), epochs=3, batch_size=16,
                    min_count=1)
    loop.train_and_evaluate(config, str(tmp_path / "run"))
    result = run_predict(f"--workdir={tmp_path / 'run'}", "A superb and lovely film", "  ", "awful, dull acting",
                         "--top_k=1")
    assert result.returncode == 2
    assert result.stderr == "error: text 2 ('  ') has no words; the other 2 text(s) were predicted\n"
    assert [line.rsplit(" ", 1)[0] for line in result.stdout.splitlines()] == ["A superb and lovely film: good",
                                                                             "awful, dull acting: bad"]
