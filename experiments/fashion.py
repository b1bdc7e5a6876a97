r"""The headline experiment: the seed-000 network on Fashion-MNIST, `python -m experiments.train` with its defaults
(every flag of that command works here too).

    python -m experiments.fashion                       # defaults: seed network, 10 epochs
    python -m experiments.fashion --epochs=2 --workdir=runs/quick
"""

from experiments import cli
from experiments.train import main

if __name__ == "__main__":
    cli.run(main, usage="python -m experiments.fashion [--flags]")
