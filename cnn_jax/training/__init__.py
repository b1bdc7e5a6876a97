"""Training runs: what they compute, how they step, and what they leave behind.

    config.py      `Config`: every setting of a run, validated
    steps.py       `TrainState`, `train_step`, `eval_step`: pure functions, jitted by the loop
    loop.py        `train_and_evaluate`: the loop over epochs, evaluation, checkpoints and outputs
    checkpoint.py  orbax checkpoints of the state and the run's progress
    writers.py     metrics.jsonl, timing.jsonl, TensorBoard events, atomic JSON
    vectorized.py  runs that differ in seed and learning rate, trained as one vmapped program
    sweeps.py      ablation sweeps as data
"""
