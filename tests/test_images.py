"""Images as people have them: folders of files of any size, format and mode, converted on the way in, and
streamed through the same batches as arrays in memory."""

import dataclasses

import numpy as np
import pytest
from conftest import write_image_folder

from cnn_jax import data
from cnn_jax.data import files, pipeline
from cnn_jax.errors import UserError
from cnn_jax.training import loop
from cnn_jax.training.config import Config


def test_a_folder_is_read_with_its_classes_splits_and_corrupt_files(tmp_path):
    paths = write_image_folder(tmp_path, per_class=10)
    (tmp_path / "bright" / "broken.jpg").write_bytes(open(paths[0], "rb").read()[:200])  # A truncated JPEG.
    (tmp_path / "dark" / "notes.txt").write_text("not an image")  # Not an image name: not even tried.
    dataset = data.load_dataset("folder", str(tmp_path), test_fraction=0.3)
    assert dataset.class_names == ("bright", "dark")  # Sorted folder names.
    assert dataset.skipped == (str(tmp_path / "bright" / "broken.jpg"),)
    assert len(dataset.train_labels) == 14 and len(dataset.test_labels) == 6  # 3 of each class's 10 held out.
    assert np.bincount(dataset.test_labels).tolist() == [3, 3]
    assert dataset.train_images.shape == (14, None, None, 3)  # Colour files among them: read as RGB.
    with pytest.raises(data.DataError, match="not all of one size; give `image_size`"):
        dataset.image_shape
    again = data.load_dataset("folder", str(tmp_path), test_fraction=0.3)
    assert list(again.test_images.paths) == list(dataset.test_images.paths)  # Deterministic.
    grey = dataset.at_shape((8, 12), 1)
    assert grey.image_shape == (8, 12, 1) and not grey.in_memory
    image = pipeline.convert(grey.test_images, 0, grey.image_shape)
    assert image.shape == (8, 12, 1) and image.dtype == np.uint8


def test_split_folders_are_the_splits(tmp_path):
    write_image_folder(tmp_path / "train", per_class=4, sizes=((10, 10),))
    write_image_folder(tmp_path / "val", per_class=2, sizes=((10, 10),), seed=1)
    dataset = data.load_dataset("folder", str(tmp_path))
    assert (len(dataset.train_labels), len(dataset.test_labels)) == (8, 4)
    assert all("/val/" in path for path in dataset.test_images.paths)
    assert dataset.image_shape == (10, 10, 3)  # One size: used as it is.


@pytest.mark.parametrize("make, message", [
    (lambda d: None, "holds no class folders"),
    (lambda d: (d / "cat").mkdir(), "holds one class folder \\('cat'\\); a classifier needs at least two"),
    (lambda d: [(d / "cat").mkdir(), (d / "dog").mkdir(), (d / "dog" / "a.txt").write_text("")],
     "class folder .*cat holds no image files"),
    (lambda d: [write_image_folder(d / "train", 2), write_image_folder(d / "test", 2, classes=("dark", "grey"))],
     "the class folders of .*test \\(dark, grey\\) are not those of .*train \\(bright, dark\\)"),
    (lambda d: [write_image_folder(d, 2), (d / "dark" / "000.jpg").write_bytes(b"junk"),
                (d / "dark" / "001.png").write_bytes(b"junk")],
     "the training split of folder .* has no readable images of class 'dark'"),
])
def test_bad_folders_are_one_line_errors(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(data.DataError, match=message) as error:
        data.load_dataset("folder", str(tmp_path))
    assert "\n" not in str(error.value)


def test_folder_needs_a_data_dir():
    with pytest.raises(data.DataError, match="`dataset`=folder needs `data_dir`"):
        data.load_dataset("folder", None)


def test_image_size_and_channels_are_checked():
    assert Config(image_size="224").image_hw == (224, 224) and Config(image_size="299,320").image_hw == (299, 320)
    for bad in ("0", "a", "1,2,3", "-4"):
        with pytest.raises(UserError, match="`image_size` must be a size S or H,W"):
            Config(image_size=bad).validate()
    with pytest.raises(UserError, match="`channels` must be 1 .grey. or 3"):
        Config(channels=2).validate()


def test_the_crops_keep_inside_the_image_and_follow_their_seed():
    rng = np.random.default_rng(0)
    boxes = [files.crop_box(400, 300, rng) for _ in range(200)]
    for left, top, right, bottom in boxes:
        area = (right - left) * (bottom - top) / (400 * 300)
        assert 0 <= left < right <= 400 and 0 <= top < bottom <= 300 and 0.07 < area <= 1
        assert 3 / 4 * 0.97 < (right - left) / (bottom - top) < 4 / 3 * 1.03
    assert files.crop_box(400, 300, np.random.default_rng(5)) == files.crop_box(400, 300, np.random.default_rng(5))
    image = files.from_array(np.arange(60 * 90, dtype=np.uint8).reshape(60, 90, 1) % 251)
    assert files.centre(image, (30, 30)).size == (30, 30)


def test_streamed_batches_are_the_batches_of_the_arrays_in_memory(tmp_path):
    """The same images as files (streamed: read and converted in Grain's worker threads) and as arrays."""
    write_image_folder(tmp_path, per_class=9, classes=("a", "b", "c"), sizes=((12, 10),))
    streamed = data.load_dataset("folder", str(tmp_path), test_fraction=0.25)
    as_arrays = lambda images: np.stack([files.as_array(images.open(i), 3) for i in range(len(images))])  # noqa: E731
    memory = dataclasses.replace(streamed, train_images=as_arrays(streamed.train_images),
                                 test_images=as_arrays(streamed.test_images))
    assert memory.in_memory and not streamed.in_memory
    assert not memory.at_shape((12, 10), 0).in_memory  # Converted (even to its own size): streamed, and cropped.
    for part in ((0, 1), (1, 2)):
        got, want = (list(pipeline.training_batches(d, 3, 4, 5, False, 2, 12, part)) for d in (streamed, memory))
        assert len(got) == len(want) == 10
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a["image"], b["image"])
            np.testing.assert_array_equal(a["label"], b["label"])
        np.testing.assert_array_equal(pipeline.test_images(streamed, [0, 2]), memory.test_images[[0, 2]])
        got, want = (list(pipeline.evaluation_batches(d, 4, part)) for d in (streamed, memory))
        assert len(got) == len(want) == 2  # 7 test images (3 + 2 + 2), the last batch padded.
        for a, b in zip(got, want, strict=True):
            for key in ("image", "label", "mask"):
                np.testing.assert_array_equal(a[key], b[key])


def test_a_resumed_stream_reads_what_an_uninterrupted_one_would(tmp_path):
    write_image_folder(tmp_path, per_class=8, sizes=((20, 30), (33, 25)))
    dataset = data.load_dataset("folder", str(tmp_path)).at_shape((16, 16), 3)
    whole = list(pipeline.training_batches(dataset, 1, 4, 3, True, 0, 7))
    resumed = list(pipeline.training_batches(dataset, 1, 4, 3, True, 4, 7))
    for a, b in zip(whole[4:], resumed, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
    assert not np.array_equal(whole[0]["image"], whole[3]["image"])  # Epoch 1 reads another order and other crops.


@pytest.mark.slow  # Trains; the everyday suite streams folders in the tests above.
def test_a_folder_of_mixed_images_trains_end_to_end(tmp_path):
    paths = write_image_folder(tmp_path / "photos", per_class=16)
    (tmp_path / "photos" / "dark" / "zz.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    config = Config(dataset="folder", data_dir=str(tmp_path / "photos"), image_size="16", batch_size=8,
                    eval_batch_size=8, epochs=3, learning_rate=3e-3)
    results = loop.train_and_evaluate(config, str(tmp_path / "run"))
    assert results["classes"] == ["bright", "dark"] and results["skipped_files"] == 1
    assert results["train_examples"] == 26 and results["image_shape"] == [16, 16, 3]
    assert results["steps"] == 9 and results["test_accuracy"] == 1.0
    assert len(paths) == 32


@pytest.mark.slow  # Two commands; the messages themselves are tested above.
def test_the_command_says_in_one_line_what_is_wrong_with_a_folder(tmp_path):
    import subprocess
    import sys

    root = str(__import__("pathlib").Path(__file__).parent.parent)
    (tmp_path / "cat").mkdir()
    for flags, message in ((["--dataset=folder"], "error: --dataset=folder needs --data_dir: the folder holding one "
                                                  "folder of images per class\n"),
                           ([f"--data_dir={tmp_path}", "--dataset=folder"], f"error: folder {tmp_path} holds one class "
                                                                            "folder ('cat'); a classifier needs at "
                                                                            "least two\n")):
        result = subprocess.run([sys.executable, "-m", "experiments.train", f"--workdir={tmp_path / 'run'}", *flags],
                                cwd=root, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and result.stderr.startswith(message) and result.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()
