"""Where run outputs go: metrics.jsonl and TensorBoard events, and JSON files written atomically."""

import json
import os

from tensorboardX import SummaryWriter


def write_json_atomically(path: str, obj) -> None:
    """Writes `obj` as JSON to `path` so that readers see the old file or the new one, never half."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class MetricWriter:
    """Appends one JSON line per record to `workdir/metrics.jsonl` and logs it to TensorBoard.

    Each record is a flat dict of numbers with a 'step'; TensorBoard gets every
    other field as a scalar at that step (for example 'test_accuracy').
    """

    def __init__(self, workdir: str):
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
        self._tensorboard = SummaryWriter(logdir=workdir)

    def write(self, record: dict) -> None:
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for name, value in record.items():
            if name != "step":
                self._tensorboard.add_scalar(name, value, record["step"])
        self._tensorboard.flush()

    def close(self) -> None:
        self._jsonl.close()
        self._tensorboard.close()
