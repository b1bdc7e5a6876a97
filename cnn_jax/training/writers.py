"""Where run outputs go: metrics.jsonl and TensorBoard events, and JSON files written atomically."""

import json
import os
import socket
import time

# TensorBoard's own record format and protos, written to a local file: without the TensorFlow import that
# tf.summary and TensorBoard's EventFileWriter (through tf.io.gfile) cost where TensorFlow is installed, or the
# PyTorch import of tensorboardX: 1-2 s of start-up each.
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.record_writer import RecordWriter


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


METRICS_FILE, TIMING_FILE = "metrics.jsonl", "timing.jsonl"


def truncate_metrics(workdir: str, step: int) -> None:
    """Drops the lines of metrics.jsonl and timing.jsonl after `step` (a resumed run writes them again), atomically."""
    for name in (METRICS_FILE, TIMING_FILE):
        path = os.path.join(workdir, name)
        if os.path.exists(path):
            with open(path) as f:
                lines = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
            tmp = f"{path}.tmp-{os.getpid()}"
            with open(tmp, "w") as f:
                f.writelines(lines)
            os.replace(tmp, path)


class MetricWriter:
    """Appends one JSON line per record to `workdir/metrics.jsonl` and logs it to TensorBoard.

    Each record is a flat dict of numbers with a 'step'; TensorBoard gets every
    other field as a scalar at that step (for example 'test_accuracy'), plus
    the `timing` scalars, which go to timing.jsonl instead of metrics.jsonl so
    that two runs of one config write identical metrics.jsonl files.
    """

    def __init__(self, workdir: str):
        self._jsonl = open(os.path.join(workdir, METRICS_FILE), "a")
        self._timing = open(os.path.join(workdir, TIMING_FILE), "a")
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
        self._tensorboard = RecordWriter(open(os.path.join(workdir, name), "wb"))
        self._write_event(Event(file_version="brain.Event:2"))

    def write(self, record: dict, timing: dict | None = None) -> None:
        for file, line in ((self._jsonl, record), (self._timing, {"step": record["step"], **(timing or {})})):
            file.write(json.dumps(line) + "\n")
            file.flush()
        scalars = {**record, **(timing or {})}
        values = [Summary.Value(tag=name, simple_value=value) for name, value in scalars.items() if name != "step"]
        self._write_event(Event(step=record["step"], summary=Summary(value=values)))

    def write_images(self, step: int, images: dict) -> None:
        """Logs uint8 images `[h, w, 1 or 3]` by tag to TensorBoard at `step`, as PNG."""
        import io

        from PIL import Image

        values = []
        for tag, image in images.items():
            png = io.BytesIO()
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(png, format="PNG")
            summary = Summary.Image(height=image.shape[0], width=image.shape[1], colorspace=image.shape[-1],
                                    encoded_image_string=png.getvalue())
            values.append(Summary.Value(tag=tag, image=summary))
        self._write_event(Event(step=step, summary=Summary(value=values)))

    def _write_event(self, event: Event) -> None:
        event.wall_time = time.time()
        self._tensorboard.write(event.SerializeToString())
        self._tensorboard.flush()

    def close(self) -> None:
        self._jsonl.close()
        self._timing.close()
        self._tensorboard.close()
