"""The PyTorch mirrors of the zoo (experiments/torch_models.py), which the zoo benchmark times cnn_jax against: the
same tensors, and, given the same values, the same logits and BatchNorm statistics."""

import functools
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch  # The `test` extra installs it (the `bench` extra's PyTorch).
from conftest import he_variables, unoptimised_jit
from flax import traverse_util

import experiments
from cnn_jax import models
from cnn_jax.errors import UserError
from experiments import torch_models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAST = ["convnet", "2xc32-max-2xc64-max-fc128"]
SLOW = ["lenet5", "allconv", "resnet18", "googlenet"]
WITHOUT_DROPOUT = {"convnet", "lenet5", "2xc32-max-2xc64-max-fc128", "resnet18"}


def mirrored(name: str, shape):
    """(Flax model, its He-normal variables, the PyTorch mirror holding them, a batch of 3 images)."""
    model = models.lookup(name)(num_classes=10)
    images = np.random.default_rng(1).standard_normal((3, *shape)).astype(np.float32)
    variables = he_variables(model, images)
    return model, variables, torch_models.load_flax(torch_models.build(name, shape, 10), variables), images


def assert_logits_equal(flax_logits, torch_logits):
    flax_logits = np.asarray(flax_logits)
    np.testing.assert_allclose(torch_logits.detach().numpy(), flax_logits, atol=2e-5 * np.abs(flax_logits).max())


def check(name: str, shape):
    model, variables, net, images = mirrored(name, shape)
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2)
    apply = unoptimised_jit(functools.partial(model.apply, train=False))
    assert_logits_equal(apply(variables, images), net.eval()(nchw))
    if name in WITHOUT_DROPOUT:  # In training: batch statistics, and the running averages they update.
        train = unoptimised_jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
        logits, updated = train(variables, images)
        assert_logits_equal(logits, net.train()(nchw))
        state = net.state_dict()
        for path, value in traverse_util.flatten_dict(updated.get("batch_stats", {})).items():
            key = ".".join((*path[:-1], {"mean": "running_mean", "var": "running_var"}[path[-1]]))
            # PyTorch's running variance averages in the unbiased variance, Flax's the biased: n / (n − 1) apart, at
            # least 3·4·4 values a channel here.
            np.testing.assert_allclose(state[key].numpy(), np.asarray(value), rtol=1e-2 if path[-1] == "var" else 1e-4,
                                       atol=1e-5)


@pytest.mark.parametrize("name", FAST)
def test_mirror_computes_the_flax_model(name):
    check(name, (28, 28, 1))


@pytest.mark.slow
@pytest.mark.parametrize("name, shape", [(name, (28, 28, 1)) for name in SLOW] + [("resnet18", (32, 32, 3))])
def test_mirror_computes_the_other_flax_models(name, shape):
    check(name, shape)


def test_mirror_has_as_many_parameters():
    for name in FAST + SLOW[:2]:
        model = models.lookup(name)(num_classes=10)
        images = np.zeros((1, 28, 28, 1), np.float32)
        flax_count = sum(np.prod(v.shape) for v in jax.tree.leaves(he_variables(model, images)["params"]))
        assert sum(p.numel() for p in torch_models.build(name, (28, 28, 1), 10).parameters()) == flax_count


def test_load_flax_refuses_another_model_s_variables():
    model = models.lookup("convnet")(num_classes=10)
    variables = he_variables(model, np.zeros((1, 28, 28, 1), np.float32))
    with pytest.raises(ValueError, match="has no PyTorch tensor"):
        torch_models.load_flax(torch_models.build("lenet5", (28, 28, 1), 10), variables)
    with pytest.raises(ValueError, match="without a Flax value"):
        torch_models.load_flax(torch_models.build("convnet", (28, 28, 1), 10), {"params": {}})


def zoo_benchmark(*flags, allocator="jemalloc"):
    command = [sys.executable, "-m", "experiments.benchmark", "--what=zoo", "--batch_size=8", "--repeats=1",
               "--repeat_seconds=0.05", *flags]
    environment = {**os.environ, "CNN_JAX_ALLOCATOR": allocator}
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=environment)


@pytest.mark.slow
def test_zoo_benchmark_prints_both_sides_and_their_ratio_for_each_model():
    done = zoo_benchmark("--models=lenet5,c8-max@32x32x3")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "jemalloc allocator" in done.stdout  # The command restarted itself under it (setup.sh installs it).
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines() if line.startswith("  ")}
    for name, shape in (("lenet5", "28x28x1"), ("c8-max", "32x32x3")):
        _, input_shape, mflop, steps, ours, theirs, ratio, *shares = rows[name]
        assert input_shape == shape and float(mflop) > 0 and int(steps) >= 1
        ours, theirs = (float(rate.replace(",", "")) for rate in (ours, theirs))
        assert float(ratio) == pytest.approx(ours / theirs, abs=0.01) and len(shares) == 2


@pytest.mark.slow
def test_zoo_benchmark_rejects_malformed_entries_and_unknown_allocators_in_one_line():
    for allocator in ("jemalloc", "system"):  # The command runs under either.
        done = zoo_benchmark("--models=lenet5@32x32", allocator=allocator)
        assert done.returncode != 0 and "Traceback" not in done.stderr
        assert "write a model, or a model@HxWxC such as resnet18@32x32x3" in done.stderr
    done = zoo_benchmark("--models=lenet5", allocator="tcmalloc")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip() == ("CNN_JAX_ALLOCATOR=tcmalloc is not one of jemalloc, system: 'jemalloc' (or unset) "
                                   "runs commands under jemalloc where it is installed, 'system' under the system's "
                                   "allocator")


@pytest.mark.parametrize("spec, message", [
    ("c8s2-fc10", "the PyTorch mirror has no 'SAME' padding"),  # Its zeros differ from side to side at stride 2.
    ("c8-max:act=gelu", "the PyTorch mirror has no 'gelu': use one of relu, tanh, sigmoid"),
    ("c8-l2", "the PyTorch mirror has no 'l2' pooling"),
])
def test_specs_without_a_pytorch_equal_are_refused_in_one_line(spec, message):
    with pytest.raises(UserError, match=message):
        torch_models.build(spec, (28, 28, 1), 10)


def test_a_command_runs_under_jemalloc_keeping_what_it_frees_even_when_preloaded_by_hand():
    library = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
    started = experiments.retaining_environment({"LD_PRELOAD": "libother.so"}, lambda: library)
    assert started == {"LD_PRELOAD": f"{library} libother.so", "MALLOC_CONF": experiments.RETAINING}
    by_hand = experiments.retaining_environment({"LD_PRELOAD": "libjemalloc.so.2"}, lambda: library)
    assert by_hand == {"LD_PRELOAD": "libjemalloc.so.2", "MALLOC_CONF": experiments.RETAINING}
    assert experiments.retaining_environment({"LD_PRELOAD": "libjemalloc.so.2", "MALLOC_CONF": "x"}, None) is None
    assert experiments.retaining_environment({}, lambda: None) is None  # Not installed: the command runs as it is.
