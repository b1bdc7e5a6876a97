"""Shared test fixtures and helpers: small synthetic IDX datasets, and the kernels a training step calls."""

import collections
import fcntl
import os
import re
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import data

COMPILATION_CACHE = "JAX_COMPILATION_CACHE_DIR"
# For graphs a test runs once or twice: XLA's backend optimisations would cost more compile time than they save.
UNOPTIMISED = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def unoptimised_jit(function):
    """`jax.jit(function)`, compiled without XLA's backend optimisations."""
    return jax.jit(function, compiler_options=UNOPTIMISED)


def normal(seed: int, shape) -> jax.Array:
    """Standard normal float32 draws of `shape`, made by NumPy: an eager `jax.random.normal` compiles a program for
    each shape it draws (0.2 to 2 s each on 2 cores)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32))


def he_variables(model, images, seed: int = 0):
    """`model`'s variables for `images` drawn in NumPy: kernels He-normal (std √(2 / fan-in)), word vectors
    standard normal, biases and running means 0, scales and running variances 1.

    For tests about what follows initialisation (gradients, a step): a big model's own initialisers cost more
    to compile and run than its training step (ResNet-101: 17 s compiled unoptimised and 9 s run, against 3 s to
    compile its forward pass). Each model's own initialisation is tested by the forward-pass tests."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "embedding":  # Word vectors: standard normal.
            return rng.standard_normal(leaf.shape).astype(leaf.dtype)
        if name == "kernel":
            return (rng.standard_normal(leaf.shape) * np.sqrt(2 / np.prod(leaf.shape[:-1]))).astype(leaf.dtype)
        return np.full(leaf.shape, 1 if name in ("scale", "var") else 0, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, jax.eval_shape(model.init, jax.random.key(0), images))


EXAMPLE_SHAPES = {data.IMAGES: (28, 28, 1), data.SIGNALS: (40, 1), data.TOKENS: (64,)}
"""One example of each kind of input, as the tests build models for it: a 28×28×1 image, a 40×1 signal (MNIST-1D),
a text of 64 tokens (of a `VOCABULARY`-word vocabulary)."""
VOCABULARY = 1000


def example_model(name: str, num_classes: int = 10):
    """(zoo model or spec `name` for `num_classes`, the shape of one example it takes: `EXAMPLE_SHAPES`)."""
    from cnn_jax import models

    model = models.lookup(name)(num_classes=num_classes)
    if models.inputs_of(model) == data.TOKENS:
        model = model.clone(vocab_size=VOCABULARY)
    return model, EXAMPLE_SHAPES[models.inputs_of(model)]


SAME_BLOCKS = {"resnet34": "resnet18", "resnet101": "resnet50", **{f"vgg{n}{bn}": f"vgg11{bn}" for n in (13, 16, 19)
                                                                    for bn in ("", "_bn")}}
"""Deeper networks and the shallower one whose blocks and initialisers they repeat: the shallower one's training
step is tested, and its own initialisation; theirs, which costs more to compile and run than their forward pass
(ResNet-101: 17 s and 9 s against 3 s), is stood in for by `he_variables` where a test needs variables."""


def pytest_configure(config):
    """One compilation cache for the whole test run, new for each run: the pytest process, its xdist workers and
    every command a test starts (they inherit the environment) compile a program once, so the dozens of runs
    of one config in test_scale.py compile in the first. Nothing carries over from one test run to the next."""
    if hasattr(config, "workerinput"):  # An xdist worker: the environment came from the controller.
        return
    os.environ[COMPILATION_CACHE] = tempfile.mkdtemp(prefix="cnn_jax-tests-compiled-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
    jax.config.update("jax_compilation_cache_dir", os.environ[COMPILATION_CACHE])  # Imported before: this process.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def pytest_unconfigure(config):
    if not hasattr(config, "workerinput"):
        shutil.rmtree(os.environ.pop(COMPILATION_CACHE), ignore_errors=True)


def write_idx_dataset(directory, num_train=300, num_test=200, gz=True, seed=0):
    """Writes a learnable MNIST-format dataset: class k is a bright bar across row 2 + 2k, on noise.

    The bars are centred, so the classes survive left-right mirroring.
    """
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gz else ""
    for split, count in (("train", num_train), ("t10k", num_test)):
        labels = rng.integers(0, 10, count).astype(np.uint8)
        images = rng.integers(0, 60, (count, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, 2 + 2 * label : 4 + 2 * label, 6:22] = 255
        data.write_idx(os.path.join(directory, f"{split}-images-idx3-ubyte{suffix}"), images)
        data.write_idx(os.path.join(directory, f"{split}-labels-idx1-ubyte{suffix}"), labels)
    return directory


@pytest.fixture
def make_idx_dataset():
    """The function write_idx_dataset(directory, num_train, num_test, gz, seed)."""
    return write_idx_dataset


@pytest.fixture
def idx_dir(tmp_path):
    """A folder holding a small learnable Fashion-MNIST-format dataset (300 train, 200 test)."""
    directory = tmp_path / "idx"
    directory.mkdir()
    return write_idx_dataset(str(directory))


SEED_RUN = dict(max_steps=600, max_test_examples=1000)
"""A short real run: the seed network on the real Fashion-MNIST (Debian's package), 600 steps of 50 (about 85% on
the test split), its first 1,000 test images."""


def _shared_run(tmp_path_factory, name: str, make_config) -> str:
    """The workdir `name` of a run of `make_config(folder)`, trained once per test run: the first xdist worker
    to need it trains it while the others wait (a lock in the folder the workers' temporary folders share)."""
    from cnn_jax.training import loop

    shared = tmp_path_factory.getbasetemp().parent  # pytest-of-<user>/pytest-<n>, with or without xdist.
    workdir = shared / name
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (workdir / "results.json").exists():
            loop.train_and_evaluate(make_config(shared), str(workdir))
    return str(workdir)


@pytest.fixture(scope="session")
def seed_run(tmp_path_factory) -> str:
    """The workdir of `SEED_RUN`, trained once per test run."""
    from cnn_jax.training.config import Config

    return _shared_run(tmp_path_factory, "seed_run", lambda shared: Config(
        max_steps=SEED_RUN["max_steps"], max_test_examples=SEED_RUN["max_test_examples"]))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> str:
    """The workdir of the seed network trained 2 steps on `write_idx_dataset`'s 300 + 200 synthetic images: a run
    with a checkpoint, for tests of what reads one."""
    from cnn_jax.training.config import Config

    def config(shared):
        folder = shared / "tiny_run_idx"
        folder.mkdir(exist_ok=True)
        return Config(data_dir=write_idx_dataset(str(folder)), max_steps=2, epochs=1)

    return _shared_run(tmp_path_factory, "tiny_run", config)


def ffi_targets(model, image_shape) -> collections.Counter:
    """How many times each compiled kernel (FFI target) is called in one training step of `model` on `image_shape`.

    The step is the gradient of a training-mode forward pass, lowered (not
    compiled) for abstract parameters: what the program asks for, before XLA
    drops unused results.
    """
    x = jnp.zeros(image_shape)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)

    def loss(params, batch_stats):
        y, _ = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"],
                           rngs={"dropout": jax.random.key(1)})
        return y.sum()

    return custom_calls(jax.jit(jax.grad(loss)).lower(variables["params"], variables.get("batch_stats", {})))


def custom_calls(lowered) -> collections.Counter:
    """How many times each FFI target is called in a lowered program (`jax.jit(f).lower(...)`)."""
    return collections.Counter(re.findall(r"custom_call @(\w+)", lowered.as_text()))


def write_image_folder(directory, per_class=12, classes=("dark", "bright"), sizes=((20, 30), (33, 25), (24, 24)),
                       seed=0):
    """Writes `directory/<class>/*` image files, class k of brightness 40 + 180 k / (classes - 1) plus noise: in
    turn JPEG, PNG, BMP and GIF, of `sizes` (h, w) in turn, grey, RGB or palette in turn (a JPEG RGB, not palette). Returns the paths."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    formats, modes, paths = ("jpg", "png", "bmp", "gif"), ("L", "RGB", "P"), []
    for k, name in enumerate(classes):
        os.makedirs(os.path.join(directory, name), exist_ok=True)
        for i in range(per_class):
            height, width = sizes[i % len(sizes)]
            shade = 40 + 180 * k // max(len(classes) - 1, 1)
            pixels = np.clip(shade + rng.integers(-20, 21, (height, width, 3)), 0, 255).astype(np.uint8)
            suffix, mode = formats[i % len(formats)], modes[i % len(modes)]
            image = Image.fromarray(pixels).convert("RGB" if (suffix, mode) == ("jpg", "P") else mode)
            path = os.path.join(directory, name, f"{i:03d}.{suffix}")
            image.save(path)
            paths.append(path)
    return paths


REVIEW_WORDS = {"good": ("good", "great", "lovely", "superb", "fine"), "bad": ("bad", "awful", "dull", "poor", "worse")}
NEUTRAL_WORDS = ("the", "film", "was", "a", "plot", "and", "it", "acting", "story", "of")


def write_reviews(path, per_class=60, seed=0, extra: str = ""):
    """Writes a CSV (`text,label`) of `per_class` short reviews per class: neutral words and two of the class's
    own (`REVIEW_WORDS`), in random order, each text ending in `extra`. Returns the path."""
    import csv

    rng = np.random.default_rng(seed)
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["text", "label"])
        for i in range(per_class * len(REVIEW_WORDS)):
            label = tuple(REVIEW_WORDS)[i % len(REVIEW_WORDS)]
            words = [*rng.choice(NEUTRAL_WORDS, rng.integers(4, 9)), *rng.choice(REVIEW_WORDS[label], 2)]
            writer.writerow([" ".join(rng.permutation(words)) + extra, label])
    return str(path)
