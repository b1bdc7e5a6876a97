"""How a trained network answers when its input moves: accuracy and logits on test images shifted by a few pixels.

    shifted = invariance.shift(images, 3, invariance.RIGHT)          # zero-filled (or circular=True)
    response = invariance.shift_response(logits_fn, images, labels, range(9))
    measured = invariance.run_response("runs/seed", max_shift=8)   # a trained run, and its train/test gap

Seed documents 000 and 003 credit pooling with translation invariance: an
object is recognised wherever it appears, and an MLP, which has no such
mechanism, is not. `shift_response` measures it: for each shift s it moves
every image s pixels in each of the four directions (`DIRECTIONS`), filling
the uncovered border with zeros (the background of Fashion-MNIST and MNIST),
and reports the accuracy and how far the logits moved from the unshifted
images', averaged over the four directions. `experiments.invariance` trains
the seed network with and without pooling, and an MLP, and draws the curves.
"""

import statistics
from collections.abc import Callable, Iterable

import numpy as np

RIGHT, LEFT, DOWN, UP = (0, 1), (0, -1), (1, 0), (-1, 0)
DIRECTIONS = (RIGHT, LEFT, DOWN, UP)
"""(rows, columns) steps of one pixel."""


def shift(images: np.ndarray, pixels: int, direction: tuple[int, int], circular: bool = False) -> np.ndarray:
    """`images` `[n, h, w, c]` moved `pixels` along `direction` ((rows, columns), e.g. `RIGHT`): the border left
    uncovered is zeros, or with `circular` the pixels pushed off the other side (a rotation of the torus)."""
    moved = np.roll(images, (pixels * direction[0], pixels * direction[1]), axis=(1, 2))
    if circular or pixels == 0:
        return moved
    rows, columns = (slice(None, pixels) if step > 0 else slice(-pixels, None) if step < 0 else slice(0, 0)
                     for step in direction)
    moved[:, rows] = 0
    moved[:, :, columns] = 0
    return moved


def shift_response(logits_fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray, labels: np.ndarray,
                   shifts: Iterable[int], circular: bool = False, batch_size: int = 500) -> dict[str, list[float]]:
    """The network's answers on `images` shifted by each of `shifts` pixels, averaged over `DIRECTIONS`.

    `logits_fn` maps a batch of images (as `images` holds them) to logits
    `[b, classes]`. Returns {"shift": [s, ...], "accuracy": [...],
    "logit_change": [mean ‖z(shifted) − z‖₂ over images and directions],
    "relative_logit_change": [that over the mean ‖z‖₂ of the unshifted
    images]}, one value per shift.
    """

    def logits(x):
        return np.concatenate([np.asarray(logits_fn(x[k : k + batch_size])) for k in range(0, len(x), batch_size)])

    still = logits(images)
    scale = float(np.linalg.norm(still, axis=-1).mean())
    response = {"shift": [], "accuracy": [], "logit_change": [], "relative_logit_change": []}
    for pixels in shifts:
        moved = [still] if pixels == 0 else [logits(shift(images, pixels, direction, circular))
                                             for direction in DIRECTIONS]
        change = float(np.mean([np.linalg.norm(z - still, axis=-1).mean() for z in moved]))
        response["shift"].append(int(pixels))
        response["accuracy"].append(float(np.mean([(z.argmax(-1) == labels).mean() for z in moved])))
        response["logit_change"].append(change)
        response["relative_logit_change"].append(change / scale)
    return response


TRAIN_CHECKED = 10000
"""Training images whose test-mode accuracy gives a run's train/test gap (`run_response`)."""


def run_response(workdir: str, max_shift: int) -> dict:
    """The trained run in `workdir`: `shift_response` on its test split for shifts 0 to `max_shift`, its model
    (`spec`), parameters, test-mode accuracy on its first `TRAIN_CHECKED` training images and the train/test
    gap (that minus the unshifted test accuracy)."""
    import jax

    from cnn_jax import data
    from cnn_jax.analysis import arithmetic
    from cnn_jax.data import pipeline
    from cnn_jax.training import trained

    run = trained.load(workdir)
    apply = jax.jit(lambda variables, x: run.model.apply(variables, data.normalize(x), train=False))

    def logits(x):
        return apply(run.variables, x)

    dataset = run.dataset
    response = shift_response(logits, pipeline.test_images(dataset), dataset.test_labels, range(max_shift + 1))
    train = shift_response(logits, dataset.train_images[:TRAIN_CHECKED], dataset.train_labels[:TRAIN_CHECKED], [0])
    return {**response, "spec": run.config.model, "params": arithmetic.count_params(run.variables["params"]),
            "train_accuracy": train["accuracy"][0], "gap": train["accuracy"][0] - response["accuracy"][0]}


def over_seeds(measured: dict[str, list[dict]]) -> dict:
    """{"models": per name, its spec, parameters, seeds, shifts, and for "accuracy", "logit_change" and
    "relative_logit_change" the mean over its runs (`run_response`s) and the std (`<key>_std`) per shift, the
    mean train/test gap and its std; "runs": `measured` as given}."""

    def mean_std(values):
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    models = {}
    for name, per_seed in measured.items():
        shifts = per_seed[0]["shift"]
        entry = {"spec": per_seed[0]["spec"], "params": per_seed[0]["params"], "seeds": len(per_seed),
                 "shift": shifts}
        for key in ("accuracy", "logit_change", "relative_logit_change"):
            pairs = [mean_std([m[key][k] for m in per_seed]) for k in range(len(shifts))]
            entry[key], entry[f"{key}_std"] = [p[0] for p in pairs], [p[1] for p in pairs]
        entry["gap"], entry["gap_std"] = mean_std([m["gap"] for m in per_seed])
        entry["train_accuracy"] = statistics.mean(m["train_accuracy"] for m in per_seed)
        models[name] = entry
    return {"models": models, "runs": measured}
