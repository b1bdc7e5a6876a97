"""The README's promises that can be checked without running them: its commands, paths and Python example exist."""

import ast
import importlib
import importlib.util
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

with open(os.path.join(ROOT, "README.md")) as f:
    README = f.read()


def test_every_command_the_readme_shows_is_a_module_of_this_repository():
    commands = set(re.findall(r"python -m ([\w.]+)", README)) - {"pytest"}
    assert "experiments.fashion" in commands and "experiments.summary" in commands
    for module in commands:
        assert importlib.util.find_spec(module) is not None, f"README runs python -m {module}, which does not exist"


def test_every_path_the_readme_names_exists():
    paths = set(re.findall(r"`((?:cnn_jax|experiments|tests)/[\w/.]*)`", README))
    assert "cnn_jax/kernels/dispatch.py" in paths
    for path in paths:
        assert os.path.exists(os.path.join(ROOT, path)), f"README names {path}, which does not exist"


def test_every_dotted_name_the_readme_names_exists():
    names = set(re.findall(r"`(cnn_jax(?:\.\w+)+)", README))
    assert "cnn_jax.analysis.convert.to_fully_convolutional" in names
    for name in names:
        parts = name.split(".")
        for split in range(len(parts), 0, -1):  # The longest importable prefix, then attributes.
            try:
                value = importlib.import_module(".".join(parts[:split]))
                break
            except ModuleNotFoundError:
                continue
        for attribute in parts[split:]:
            assert hasattr(value, attribute), f"README names {name}: {attribute} does not exist"
            value = getattr(value, attribute)


def test_the_python_example_imports_and_calls_what_exists():
    (example,) = re.findall(r"## From Python\n\n```python\n(.*?)```", README, re.S)
    tree = ast.parse(example)
    bound = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bound.update({alias.asname or alias.name: importlib.import_module(alias.name) for alias in node.names})
        elif isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for alias in node.names:
                value = getattr(module, alias.name, None)
                if value is None:  # A submodule imported by name.
                    value = importlib.import_module(f"{node.module}.{alias.name}")
                bound[alias.asname or alias.name] = value
    used = [node for node in ast.walk(tree) if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id in bound]
    assert len(used) >= 8, "the example should call the library"
    for node in used:
        assert hasattr(bound[node.value.id], node.attr), f"README's example calls {node.value.id}.{node.attr}"
