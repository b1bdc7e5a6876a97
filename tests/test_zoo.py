"""The model zoo as a whole: names, the README's generated table, and training by name from the command line."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import SAME_BLOCKS, UNOPTIMISED, VOCABULARY, example_model, he_variables, normal, unoptimised_jit

from cnn_jax import data, models
from cnn_jax.errors import UserError
from cnn_jax.models import spec
from experiments import zoo_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_zoo_names_are_lower_case_identifiers_and_never_specs():
    for name in models.MODELS:
        assert name.isidentifier() and name == name.lower() and not spec.is_spec(name), name


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name in models.MODELS if name not in SAME_BLOCKS])
def test_one_training_step_reaches_every_parameter_and_lowers_the_loss(name):
    """Also the model's test-mode logits at 28×28×1 (the zoo's other files check them, from the model's own
    initialisation, at 32×32×3). ResNet-34 and -101 repeat ResNet-18's and -50's blocks, VGG-13, -16 and -19
    VGG-11's (`SAME_BLOCKS`): their step would test the same code at up to 3× the compile time (ResNet-34 and
    -101 measured 23 s and 68 s). Models of signals and texts take a 40×1 signal or 64 tokens
    (`EXAMPLE_SHAPES`)."""
    model, shape = example_model(name)
    images, labels = normal(1, (4, *shape)), jnp.array([3, 1, 4, 1])
    if models.inputs_of(model) == data.TOKENS:
        images = jnp.asarray(np.random.default_rng(1).integers(0, VOCABULARY, (4, *shape)), jnp.int32)
    variables = he_variables(model, images)
    # Compiled, unoptimised: eagerly, each of GoogLeNet's many differently-shaped operations is compiled on its
    # own (measured: 40 s eager, 11 s compiled; VGG-19 11 s and 6 s).
    test_logits = unoptimised_jit(model.apply)(variables, images)
    assert test_logits.shape == (4, 10) and np.all(np.isfinite(test_logits))
    adam = optax.adam(1e-4)

    def loss(params):  # The same dropout mask before and after the step, so the two losses compare.
        logits, _ = model.apply({**variables, "params": params}, images, train=True,
                                rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

    def step(params):
        (before, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, _ = adam.update(grads, adam.init(params), params)
        return logits, grads, before, loss(optax.apply_updates(params, updates))[0]

    compiled = jax.jit(step).lower(variables["params"]).compile(UNOPTIMISED)
    logits, grads, before, after = compiled(variables["params"])
    assert logits.shape == (4, 10) and np.all(np.isfinite(logits))
    for path, grad in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(grad)), jax.tree_util.keystr(path)
        assert np.any(grad != 0), f"{jax.tree_util.keystr(path)} gets no gradient"
    assert after < before


@pytest.mark.slow  # Traces every model at three sizes.
def test_readme_zoo_table_is_the_generated_one():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert zoo_table.readme_table(readme) == zoo_table.table(), "run: python -m experiments.zoo_table --write"


def test_unknown_model_names_the_choices_and_the_spec_alternative():
    with pytest.raises(UserError, match="unknown model 'vgg17': choose one of convnet, .*vgg16.*text spec"):
        models.lookup("vgg17")


@pytest.mark.slow
@pytest.mark.parametrize("model, extra", [("lenet5", []), (None, ["--loss=sigmoid_cross_entropy"])])
def test_zoo_models_and_specs_train_from_the_command_line(tmp_path, idx_dir, model, extra):
    model = model or "2xc8-max-c16k5-avg-fc32:act=tanh"
    workdir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "experiments.fashion", f"--model={model}", f"--workdir={workdir}", f"--data_dir={idx_dir}",
         "--epochs=1", "--batch_size=20", "--max_steps=3", "--max_test_examples=40", *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    results = json.loads((workdir / "results.json").read_text())
    assert results["model"] == model and results["steps"] == 3
    assert results["params"] == zoo_table.parameter_count(model, (28, 28, 1), 10)
