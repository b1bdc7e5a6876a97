"""The model zoo as a whole: names, the README's generated table, and training by name from the command line."""

import json
import os
import subprocess
import sys

import pytest

from cnn_jax import models, spec
from cnn_jax.errors import UserError
from experiments import zoo_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_zoo_names_are_lower_case_identifiers_and_never_specs():
    for name in models.MODELS:
        assert name.isidentifier() and name == name.lower() and not spec.is_spec(name), name


def test_readme_zoo_table_is_the_generated_one():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert zoo_table.readme_table(readme) == zoo_table.table(), "run: python -m experiments.zoo_table --write"


def test_unknown_model_names_the_choices_and_the_spec_alternative():
    with pytest.raises(UserError, match="unknown model 'vgg17': choose one of convnet, .*vgg16.*text spec"):
        models.lookup("vgg17")


@pytest.mark.parametrize("model, extra", [("resnet18", []), (None, ["--loss=sigmoid_cross_entropy"])])
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
