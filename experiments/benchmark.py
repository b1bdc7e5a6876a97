r"""Benchmarks: each compares variants side by side in one run, on one machine.

    python -m experiments.benchmark                      # --what=torch: cnn_jax vs PyTorch
    python -m experiments.benchmark --what=zoo [--models=resnet18,googlenet]  # every zoo model vs PyTorch
    python -m experiments.benchmark --what=zoo --dtype=bfloat16   # mixed precision vs PyTorch's autocast
    python -m experiments.benchmark --what=dtypes                 # cnn_jax in bfloat16 vs float32
    python -m experiments.benchmark --what=conv_ops
    python -m experiments.benchmark --what=im2col                 # convolution as one matrix product, vs XLA, oneDNN
    python -m experiments.benchmark --what=input_pipeline
    python -m experiments.benchmark --what=max_pool
    python -m experiments.benchmark --what=fusion
    python -m experiments.benchmark --what=vmap_seeds --seeds=4
    python -m experiments.benchmark --what=devices --batch_size=128
    python -m experiments.benchmark --what=inspect
    python -m experiments.image_pipelines               # input pipelines: folders of JPEGs, vs torchvision and tf.data

torch: training throughput of the seed network in cnn_jax and in the PyTorch
  reference (experiments/torch_reference.py: same architecture, initialisation,
  optimizer, schedule, augmentation and batch), the model's FLOPs per image,
  the fraction of this machine's measured float32 matmul rate each reaches,
  and the wall time and test accuracy of a whole `--epochs` run of each
  (start-up included), run one after the other as subprocesses.

torch and zoo take `--dtype`: with bfloat16, cnn_jax's mixed precision
  (`--dtype=bfloat16` of the training commands) against PyTorch's
  `torch.autocast("cpu", dtype=torch.bfloat16)`, and shares of the measured
  bfloat16 matmul peak.
zoo: training throughput of each of `--models` (batch 128 in BENCHMARKS.md)
  in cnn_jax and in its PyTorch mirror (experiments/torch_models.py: the same
  layers, started from the same initial values copied from Flax, Adam with
  the same schedule, the same flips and data), taking turns repeat by repeat;
  the ratio, and the share of the measured matmul peak each reaches.

dtypes: training throughput of the seed network in cnn_jax computing in
  float32 and in bfloat16 (`--dtype=bfloat16`, mixed precision), with host
  batches as the training loop cuts them and with batches gathered on the
  device (the step alone).
conv_ops: each convolution of the seed network's training step on its own
  (forward, gradient to the weights, gradient to the input), in JAX (XLA's
  convolution and cnn_jax.kernels.dispatch.conv_general_dilated) and in PyTorch, as ms
  per batch and GFLOP/s: where the time of a step goes.
input_pipeline: training throughput of the seed network when batches are cut
  on the host (NumPy gather, copied to the device at each step: what
  cnn_jax.training.loop does) versus when the whole training set lives on the device
  and each step gathers its batch there from a device-resident permutation.
max_pool: training throughput of the seed network with cnn_jax's max-pooling
  (reshape and max where windows tile the input; on CPU, fused with BatchNorm
  and ReLU, see fusion) versus flax.linen.max_pool (XLA's windowed reduction,
  whose gradient is select-and-scatter).
fusion: training throughput of the seed network with training-mode BatchNorm,
  ReLU and 2x2 max-pooling fused in one compiled CPU kernel
  (cnn_jax.kernels.fused.BatchNormReluMaxPool) versus the same three layers left
  to XLA (the same max_pool inside a lambda, which `pooling.describe` cannot see
  into, is not fused).
vmap_seeds: training throughput of `--seeds` copies of the seed network (an
  ablation's seeds) run one after another, each with its own compiled step,
  versus one step vectorised over the seeds with jax.vmap
  (cnn_jax.training.vectorized); examples/s counts every seed's examples.

devices: training throughput of the seed network on 1, 2 and 4 CPU devices
  (`--device_counts`; XLA_FLAGS=--xla_force_host_platform_device_count) in one
  process, with cnn_jax's compiled kernels (each device's kernels on its part
  of the batch) and with XLA's operations (CNN_JAX_KERNELS=xla). Each
  measurement is a process of its own (`--what=train_step`, which times the
  training step on every device JAX sees), and the processes take turns.

inspect: on a trained seed network (`--workdir`, else one trained here for
  600 steps), feature visualisation of all 32 channels of its second
  convolution (256 steps), compilation included (JAX's caches cleared before
  each repeat), and Grad-CAM and HiResCAM of 100 test images after
  compilation (`cnn_jax.analysis.inspect`).

Each variant runs a warm-up, then `--repeats` timed runs of `--steps` training
steps at `--batch_size`, the variants taking turns run by run; the median of
each is reported.
"""

import dataclasses
import functools
import itertools
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from jax.sharding import NamedSharding, PartitionSpec

from cnn_jax import data, models
from cnn_jax.analysis import arithmetic, summary
from cnn_jax.errors import UserError
from cnn_jax.kernels import dispatch, ffi, im2col
from cnn_jax.layers import pooling
from cnn_jax.training import loop, vectorized
from cnn_jax.training.config import DTYPES, Config
from cnn_jax.training.steps import create_train_state, train_step
from experiments import allocator, cli

ZOO = ("convnet", "lenet5", "2xc32-max-2xc64-max-fc128", "allconv", "resnet18", "googlenet", "resnet18@32x32x3")
"""The models `--what=zoo` compares by default: a name or spec, at 28×28×1 or at the image shape after `@`."""


flags.DEFINE_enum("what", "torch", ["torch", "zoo", "dtypes", "conv_ops", "im2col", "input_pipeline", "max_pool", "fusion",
                                    "vmap_seeds", "devices", "train_step", "inspect", "transfer"],
                  "Which comparison to run.")
flags.DEFINE_string("workdir", None, "--what=inspect: a seed-network run to look inside (default: one trained here).")
flags.DEFINE_list("device_counts", ["1", "2", "4"], "--what=devices: the numbers of CPU devices to compare.")
flags.DEFINE_integer("epochs", 1, "--what=torch: epochs of the whole timed runs (0 skips them).")
flags.DEFINE_integer("batch_size", 100, "Training examples per step.")
flags.DEFINE_enum("dtype", "float32", DTYPES, "--what=torch, zoo: what both sides compute in (bfloat16: cnn_jax's "
                  "mixed precision against PyTorch's autocast).")
flags.DEFINE_integer("steps", 200, "Timed steps per repeat.")
flags.DEFINE_integer("repeats", 5, "Timed repeats; the median is reported.")
flags.DEFINE_list("models", list(ZOO), "--what=zoo: the models to compare, each a zoo name or spec, at 28x28x1 "
                  "or at the image shape after @ (resnet18@32x32x3).")
flags.DEFINE_float("repeat_seconds", 2.0, "--what=zoo: about how long each timed repeat runs (it sets the steps).")
flags.DEFINE_integer("seeds", 4, "--what=vmap_seeds: seeds trained together.")
FLAGS = flags.FLAGS


def median_seconds(run, repeats: int) -> float:
    """Median wall time of `run()` over `repeats` calls, after one warm-up call."""
    return interleaved_median_seconds({"run": run}, repeats)["run"]


def interleaved_median_seconds(runs: dict, repeats: int) -> dict:
    """{name: median wall time of run()} over `repeats` rounds, each timing every run once, after a warm-up each.

    Taking turns round by round means a drift in the machine's speed (this
    project's virtual machines drift by ±10% within minutes) slows every
    variant alike instead of whichever happened to run during it.
    """
    for run in runs.values():
        run()
    seconds = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in seconds.items()}


def host_loop(model, dataset, batch_size: int, num_steps: int, layout=None, seeds=(0,), **fields):
    """A function running `num_steps` training steps (or as many as it is given) of `model` as the training loop
    does: host batches and an ahead-of-time compiled step, for one run (`layout` None) or the runs of `seeds` held
    by `layout`; `fields` set the runs' other Config fields."""
    layout = layout or loop.OneRun()
    configs = [Config(batch_size=batch_size, seed=seed, **fields) for seed in seeds]
    mesh = loop.data_mesh(("batch_size", batch_size), ("eval_batch_size", configs[0].eval_batch_size))
    state = layout.initial_state(model, configs, dataset.image_shape, num_steps)
    state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
    step, _ = layout.compile(state, dataset, configs, mesh)
    orders = [data.epoch_permutation(seed, 0, len(dataset.train_labels)) for seed in seeds]
    split = NamedSharding(mesh, layout.batch_spec())

    def run(steps: int = num_steps):
        nonlocal state
        batches = zip(*(data.batches(dataset.train_images, dataset.train_labels, batch_size, order) for order in orders))
        for run_batches in itertools.islice(batches, steps):
            state, _ = step(state, jax.device_put(layout.batch(list(run_batches)), split))
        jax.block_until_ready(state)

    return run


def seeds_one_by_one(model, dataset, batch_size: int, num_steps: int, seeds: int):
    """A function running `num_steps` training steps of each of `seeds` models, one model after another."""
    runs = [host_loop(model, dataset, batch_size, num_steps, seeds=(seed,)) for seed in range(seeds)]

    def run():
        for run_seed in runs:
            run_seed()

    return run


def seeds_vmapped(model, dataset, batch_size: int, num_steps: int, seeds: int):
    """A function running `num_steps` training steps of `seeds` models at once, vectorised (StackedRuns)."""
    return host_loop(model, dataset, batch_size, num_steps, vectorized.StackedRuns(), tuple(range(seeds)))


def device_loop(model, dataset, batch_size: int, num_steps: int, **fields):
    """A function running `num_steps` training steps of `model`, batches gathered on the device; `fields` set the
    run's other Config fields."""
    config = Config(batch_size=batch_size, **fields)
    state = create_train_state(model, config, dataset.image_shape, num_steps)
    step_fn = functools.partial(train_step, augment=config.augment)
    order = data.epoch_permutation(0, 0, len(dataset.train_labels))
    images, labels, order = jax.device_put((dataset.train_images, dataset.train_labels, order))

    @functools.partial(jax.jit, donate_argnums=0)
    def step(state, i):
        idx = jax.lax.dynamic_slice_in_dim(order, i * batch_size, batch_size)
        return step_fn(state, {"image": images[idx], "label": labels[idx]})

    def run():
        nonlocal state
        for i in range(num_steps):
            state, _ = step(state, i)
        jax.block_until_ready(state)

    return run


def torch_loop(dataset, batch_size: int, steps: int, net=None, dtype: str = "float32"):
    """A function running `steps` training steps of the PyTorch reference: the seed network, or `net`; in
    bfloat16, under autocast."""
    from experiments import torch_reference

    trainer = torch_reference.Trainer(dataset, batch_size, Config().learning_rate, 0, total_steps=10**9, net=net,
                                      dtype=dtype)
    order = data.epoch_permutation(0, 0, len(dataset.train_labels))
    return lambda: trainer.epoch(order, steps)


def matmul_flops_per_second(dtype: str = "float32", n: int = 2048, repeats: int = 5) -> dict:
    """Measured n×n matmul rate in `dtype` of JAX and of PyTorch on this machine."""
    import torch

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    jax_matmul = jax.jit(lambda a: a @ a)
    ta = torch.randn(n, n, dtype=getattr(torch, dtype))
    return {
        "jax": 2 * n**3 / median_seconds(lambda: jax_matmul(a).block_until_ready(), repeats),
        "torch": 2 * n**3 / median_seconds(lambda: ta @ ta, repeats),
    }


def whole_run(command: list[str]) -> tuple[float, float]:
    """(wall seconds, final test accuracy) of a whole training command, start-up included."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *command], capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    accuracy = float(re.search(r"test accuracy: ([0-9.]+)", result.stdout).group(1))
    return seconds, accuracy


def versus_torch(batch_size: int, steps: int, repeats: int, epochs: int, dtype: str) -> None:
    dataset = data.load_dataset("fashion_mnist")
    loops = {"cnn_jax": host_loop(models.ConvNet(), dataset, batch_size, steps, dtype=dtype),
             "PyTorch": torch_loop(dataset, batch_size, steps, dtype=dtype)}
    rates = {name: steps * batch_size / t for name, t in interleaved_median_seconds(loops, repeats).items()}
    forward = summary.summarize(models.ConvNet(), dataset.image_shape)["total_flops"]
    training = 3 * forward  # Forward, plus backward to activations and to weights: the usual 3×.
    peak = max(matmul_flops_per_second(dtype).values())
    runs = {}
    if epochs:
        with tempfile.TemporaryDirectory() as workdir:
            flags_ = [f"--epochs={epochs}", f"--batch_size={batch_size}", f"--dtype={dtype}"]
            runs["cnn_jax"] = whole_run(["-m", "experiments.fashion", f"--workdir={workdir}/run", *flags_])
            runs["PyTorch"] = whole_run(["-m", "experiments.torch_reference", *flags_])

    import torch

    print(f"seed network, batch {batch_size}, {dtype}, {jax.devices()[0].device_kind}; JAX {jax.__version__}, "
          f"PyTorch {torch.__version__} ({torch.get_num_threads()} threads)")
    print(f"model: {forward / 1e6:.2f} MFLOP per image forward (conv and dense multiply-adds x2), "
          f"{training / 1e6:.2f} MFLOP per training image (3x); "
          f"measured {dtype} matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(f"training steps: median of {repeats} x {steps} steps after a warm-up, the two taking turns")
    header = f"  {'':8s} {'examples/s':>11s} {'ratio':>6s} {'% of peak':>9s}"
    if runs:
        header += f" {f'{epochs}-epoch run (s)':>18s} {'test acc':>8s}"
    print(header)
    for name, rate in rates.items():
        line = f"  {name:8s} {rate:11,.0f} {rate / rates['PyTorch']:6.2f} {100 * rate * training / peak:8.1f}%"
        if runs:
            line += f" {runs[name][0]:18.1f} {runs[name][1]:8.4f}"
        print(line)


def zoo_entry(entry: str) -> tuple[str, tuple[int, int, int]]:
    """(model name, image shape) of a `--models` entry: `name` (28×28×1) or `name@HxWxC`."""
    name, _, shape = entry.partition("@")
    try:
        height, width, channels = (int(n) for n in shape.split("x")) if shape else (28, 28, 1)
    except ValueError:
        raise UserError(f"--models entry '{entry}': write a model, or a model@HxWxC such as resnet18@32x32x3") from None
    return name, (height, width, channels)


def fashion_mnist_as(shape: tuple[int, int, int]) -> data.Dataset:
    """Fashion-MNIST with images of `shape` (28×28 zero-padded to larger, grey repeated to 3 channels): real images
    and labels, for a model's timing at another input size."""
    dataset = data.load_dataset("fashion_mnist")
    height, width, channels = shape
    if (height, width) < (28, 28) or channels not in (1, 3):
        raise UserError(f"--models: {height}x{width}x{channels} cannot hold Fashion-MNIST; use at least 28x28, with 1 "
                        "or 3 channels")

    def reshaped(images):
        top, left = (height - 28) // 2, (width - 28) // 2
        padded = np.pad(images, ((0, 0), (top, height - 28 - top), (left, width - 28 - left), (0, 0)))
        return np.repeat(padded, channels, axis=-1)

    return dataclasses.replace(dataset, train_images=reshaped(dataset.train_images),
                               test_images=reshaped(dataset.test_images))


def versus_torch_zoo(entries: list[str], batch_size: int, repeats: int, repeat_seconds: float, dtype: str) -> None:
    """Training throughput of each zoo model in cnn_jax and in its PyTorch mirror (`experiments.torch_models`),
    started from the same initial values, taking turns; the ratio, and each side's share of the matmul peak."""
    import torch

    from experiments import torch_models

    entries = [zoo_entry(entry) for entry in entries]  # Every entry checked before anything is timed.
    peak = max(matmul_flops_per_second(dtype).values())
    print(f"zoo models, batch {batch_size}, {dtype}, Adam (cosine schedule), random flips, "
          f"{jax.devices()[0].device_kind}; JAX {jax.__version__}, PyTorch {torch.__version__} "
          f"({torch.get_num_threads()} threads); oneDNN {ffi.onednn()[0]}; {allocator()} allocator; "
          f"measured {dtype} matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(f"median of {repeats} repeats of about {repeat_seconds:g} s each after a warm-up, the two taking turns; "
          "% of peak counts 3× the forward FLOPs")
    print(f"  {'model':34s} {'input':>8s} {'MFLOP/img':>9s} {'steps':>5s} {'cnn_jax ex/s':>12s} "
          f"{'PyTorch ex/s':>12s} {'ratio':>6s} {'cnn_jax %':>9s} {'PyTorch %':>9s}")
    for name, shape in entries:
        dataset = fashion_mnist_as(shape)
        model = models.lookup(name)(num_classes=dataset.num_classes)
        training = 3 * summary.summarize(model, shape)["total_flops"]
        jax_loop = host_loop(model, dataset, batch_size, 1, dtype=dtype)
        steps = max(1, round(repeat_seconds / median_seconds(jax_loop, 1)))  # One step, after one that compiles.
        initial = create_train_state(model, Config(batch_size=batch_size), shape)
        net = torch_models.load_flax(torch_models.build(name, shape, dataset.num_classes),
                                     {"params": initial.params, "batch_stats": initial.batch_stats})
        loops = {"cnn_jax": lambda: jax_loop(steps), "PyTorch": torch_loop(dataset, batch_size, steps, net, dtype)}
        rates = {side: steps * batch_size / t for side, t in interleaved_median_seconds(loops, repeats).items()}
        shares = [f"{100 * rates[side] * training / peak:8.1f}%" for side in loops]
        print(f"  {name:34s} {'x'.join(map(str, shape)):>8s} {training / 3e6:9.1f} {steps:5d} "
              f"{rates['cnn_jax']:12,.0f} {rates['PyTorch']:12,.0f} {rates['cnn_jax'] / rates['PyTorch']:6.2f} "
              f"{' '.join(shares)}", flush=True)


def conv_ops(batch_size: int, repeats: int) -> None:
    """Times the seed network's convolutions and their gradients in JAX and PyTorch."""
    import torch

    def jax_ms(fn, *args):
        fn = jax.jit(fn)
        return 1e3 * median_seconds(lambda: jax.block_until_ready(fn(*args)), repeats)

    def torch_ms(fn):
        return 1e3 * median_seconds(fn, repeats)

    print(f"seed network convolutions, batch {batch_size}, float32, median of {repeats}: ms per batch (GFLOP/s)")
    print(f"  {'':22s} {'XLA conv':>16s} {'cnn_jax conv':>16s} {'PyTorch':>16s}")
    for name, (size, cin, cout) in {"conv1 5x5 1->16": (28, 1, 16), "conv2 5x5 16->32": (14, 16, 32)}.items():
        x = jax.random.normal(jax.random.PRNGKey(0), (batch_size, size, size, cin))
        w = jax.random.normal(jax.random.PRNGKey(1), (5, 5, cin, cout))
        g = jax.random.normal(jax.random.PRNGKey(2), (batch_size, size, size, cout))
        dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
        tx = torch.randn(batch_size, cin, size, size, requires_grad=True)
        tconv = torch.nn.Conv2d(cin, cout, 5, padding=2, bias=False)
        tg = torch.randn(batch_size, cout, size, size)
        flops = 2 * batch_size * size * size * cout * 25 * cin
        rows = {}
        for impl_name, impl in (("XLA conv", jax.lax.conv_general_dilated),
                                ("cnn_jax conv", dispatch.conv_general_dilated)):
            conv = functools.partial(impl, window_strides=(1, 1), padding=((2, 2), (2, 2)), dimension_numbers=dn)
            rows.setdefault("forward", []).append(jax_ms(conv, x, w))
            rows.setdefault("weight gradient", []).append(jax_ms(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g), x, w, g))
            rows.setdefault("input gradient", []).append(jax_ms(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g), x, w, g))
        out = tconv(tx)
        rows["forward"].append(torch_ms(lambda: tconv(tx.detach())))
        rows["weight gradient"].append(torch_ms(lambda: torch.autograd.grad(out, tconv.weight, tg, retain_graph=True)))
        rows["input gradient"].append(torch_ms(lambda: torch.autograd.grad(out, tx, tg, retain_graph=True)))
        for op, times in rows.items():
            cells = " ".join(f"{t:7.2f} ({flops / t / 1e6:5.1f})" for t in times)
            print(f"  {name + ' ' + op:34s} {cells}")


IM2COL_LAYERS = {  # name: (input size, input channels, filters, kernel, stride, padding)
    "seed conv1 5x5 1->16": (28, 1, 16, 5, 1, 2),
    "seed conv2 5x5 16->32": (14, 16, 32, 5, 1, 2),
    "resnet18 3x3 64->64": (32, 64, 64, 3, 1, 1),
}
"""The layers `im2col_versus_convolutions` times: the seed network's two, and a ResNet-18 stage-1 convolution at
32×32×3's resolution."""


def lax_patches_conv(x, kernel, strides, padding):
    """im2col with the patch matrix from `lax.conv_general_dilated_patches` (channels outermost in a patch): the
    alternative `cnn_jax.kernels.im2col` was measured against."""
    *window, _, filters = kernel.shape
    patches = jax.lax.conv_general_dilated_patches(x, tuple(window), strides, padding,
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return patches @ jnp.moveaxis(kernel, 2, 0).reshape(-1, filters)


def im2col_versus_convolutions(batch_size: int, repeats: int) -> None:
    """Times each of `IM2COL_LAYERS` computed as im2col (one matrix product), by XLA's convolution and by cnn_jax's
    (oneDNN's, on CPU), forward and forward + both gradients, taking turns; and each program's memory."""
    print(f"im2col against convolutions on {jax.devices()[0].device_kind} ({jax.default_backend()}), batch "
          f"{batch_size}, float32, median of {repeats}: ms per batch (GFLOP/s); memory: XLA's temporary buffers "
          "of the forward + backward program")
    ways = {"im2col": im2col.conv, "im2col, lax patches": lax_patches_conv, "XLA conv": None,
            "cnn_jax conv": dispatch.conv_general_dilated}
    print(f"  {'':34s} " + " ".join(f"{name:>19s}" for name in ways))
    for name, (size, cin, cout, k, stride, pad) in IM2COL_LAYERS.items():
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal((batch_size, size, size, cin), np.float32))
        w = jnp.asarray(rng.standard_normal((k, k, cin, cout), np.float32) / k)
        padding = ((pad, pad), (pad, pad))
        out = arithmetic.conv_output_size(size, k, stride, pad)
        flops = arithmetic.conv_flops(k, k, cin, cout, out, out) * batch_size
        matrices = arithmetic.im2col_shapes((k, k), cin, cout, (out, out))
        dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))

        def conv_with(impl):
            if impl in (im2col.conv, lax_patches_conv):
                return lambda x, w: impl(x, w, (stride, stride), padding)
            impl = impl or jax.lax.conv_general_dilated
            return lambda x, w: impl(x, w, (stride, stride), padding, dimension_numbers=dn)

        programs = {}
        for way, impl in ways.items():
            conv = conv_with(impl)
            forward = jax.jit(conv)
            both = jax.jit(jax.grad(lambda x, w: (conv(x, w) ** 2).sum(), argnums=(0, 1)))
            programs[way] = (forward, both, both.lower(x, w).compile().memory_analysis())
        timed = {f"{way} {part}": (lambda f=fn: jax.block_until_ready(f(x, w)))
                 for way, (forward, both, _) in programs.items() for part, fn in (("forward", forward),
                                                                                  ("training", both))}
        ms = {key: 1e3 * t for key, t in interleaved_median_seconds(timed, repeats).items()}
        for part, work in (("forward", flops), ("training", 3 * flops)):
            cells = " ".join(f"{ms[f'{way} {part}']:10.2f} ({work / ms[f'{way} {part}'] / 1e6:5.1f})" for way in ways)
            print(f"  {name + ' ' + part:34s} {cells}")
        memory = " ".join(f"{programs[way][2].temp_size_in_bytes / 2**20:15.1f} MiB" for way in ways)
        patch_mib = batch_size * np.prod(matrices["patch_matrix"]) * 4 / 2**20
        print(f"  {name + ' memory':34s} {memory}   (patch matrix {matrices['patch_matrix'][0]}×"
              f"{matrices['patch_matrix'][1]} per image: {patch_mib:.1f} MiB for the batch)")


def variants(what: str, batch_size: int, steps: int) -> dict:
    """{variant name: function running `steps` training steps} for comparison `what`."""
    dataset = data.load_dataset("fashion_mnist")
    if what == "input_pipeline":
        return {
            "host batches": host_loop(models.ConvNet(), dataset, batch_size, steps),
            "device-resident data": device_loop(models.ConvNet(), dataset, batch_size, steps),
        }
    if what == "dtypes":
        # The step alone as well (batches gathered on the device): the host's part of a step is the same in both.
        return {f"{dtype}{way}": loop_of(models.ConvNet(), dataset, batch_size, steps, dtype=dtype) for dtype in DTYPES
                for way, loop_of in (("", host_loop), (", device-resident data", device_loop))}
    if what == "fusion":
        return {
            "fused kernel": host_loop(models.ConvNet(), dataset, batch_size, steps),
            # A pooling function that does not say what it computes (`pooling.describe` is None) is never fused.
            "XLA": host_loop(models.ConvNet(pool=lambda x: pooling.max_pool(x, 2)), dataset, batch_size, steps),
        }
    if what == "transfer":  # The weights' values do not change a step's cost: fresh ones stand in for trained.
        return {
            "full fine-tuning": host_loop(models.ConvNet(), dataset, batch_size, steps),
            "linear probe": host_loop(models.ConvNet(), dataset, batch_size, steps, freeze="backbone"),
        }
    if what == "vmap_seeds":
        return {
            f"{FLAGS.seeds} seeds one by one": seeds_one_by_one(models.ConvNet(), dataset, batch_size, steps, FLAGS.seeds),
            f"{FLAGS.seeds} seeds vmapped": seeds_vmapped(models.ConvNet(), dataset, batch_size, steps, FLAGS.seeds),
        }
    windowed = functools.partial(nn.max_pool, window_shape=(2, 2), strides=(2, 2))
    return {
        "cnn_jax max_pool": host_loop(models.ConvNet(), dataset, batch_size, steps),
        "flax.linen.max_pool": host_loop(models.ConvNet(pool=windowed), dataset, batch_size, steps),
    }


def train_step_rate(batch_size: int, steps: int, repeats: int) -> float:
    """Examples/s of the seed network's training step on every device JAX sees (median of `repeats`)."""
    dataset = data.load_dataset("fashion_mnist")
    return steps * batch_size / median_seconds(host_loop(models.ConvNet(), dataset, batch_size, steps), repeats)


def versus_devices(batch_size: int, steps: int, repeats: int, counts: list[int]) -> None:
    """`train_step_rate` in processes of each device count, with the compiled kernels and with XLA's operations."""
    implementations = {"compiled kernels": "auto", "XLA's operations": "xla"}
    rates = {(count, name): [] for count in counts for name in implementations}
    for _ in range(repeats):
        for (count, name), measured in rates.items():
            environment = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={count}",
                           "CNN_JAX_KERNELS": implementations[name]}
            command = [sys.executable, "-m", "experiments.benchmark", "--what=train_step", f"--batch_size={batch_size}",
                       f"--steps={steps}", "--repeats=1"]
            done = subprocess.run(command, capture_output=True, text=True, env=environment)
            if done.returncode != 0:
                tail = done.stderr.strip().splitlines()[-3:]
                raise RuntimeError(f"{count} device(s), {name}: exit status {done.returncode}: {' | '.join(tail)}")
            measured.append(float(re.search(r"([0-9.]+) examples/s", done.stdout).group(1)))
    print(f"seed network training steps on CPU devices of one process, batch {batch_size} split over them, "
          f"{os.cpu_count()} cores; median of {repeats} processes x {steps} steps after a warm-up each, taking turns")
    print(f"  {'devices':>7s} " + " ".join(f"{name:>18s}" for name in implementations))
    for count in counts:
        cells = [f"{statistics.median(rates[count, name]):10,.0f} ex/s" for name in implementations]
        print(f"  {count:7d} " + " ".join(f"{cell:>18s}" for cell in cells))


def inspect_speed(workdir: str | None, repeats: int) -> None:
    """Seconds of feature visualisation (compilation included) and of Grad-CAM (after it) on a trained seed network."""
    from cnn_jax.analysis.inspect import attribution, featvis
    from cnn_jax.training import trained

    with tempfile.TemporaryDirectory() as scratch:
        if workdir is None:
            workdir = os.path.join(scratch, "seed")
            loop.train_and_evaluate(Config(max_steps=600, max_test_examples=1000), workdir)
        run = trained.load(workdir)
    images = data.normalize(run.dataset.test_images[:100])
    classes = attribution.predicted(run.model, run.variables, images)

    def visualise():
        jax.clear_caches()
        result = featvis.visualise(run.model, run.variables, "ConvBlock_1/Conv_0", None, run.dataset.image_shape,
                                   jax.random.key(0))
        assert len(result.images) == 32

    cams = {name: functools.partial(lambda method: jax.block_until_ready(
        method(run.model, run.variables, images, classes)), attribution.lookup(name))
        for name in ("grad_cam", "hires_cam")}
    seconds = {"feature visualisation, 32 channels, 256 steps, compiling": [], **{name: [] for name in cams}}
    for _ in range(repeats):
        start = time.perf_counter()
        visualise()
        seconds["feature visualisation, 32 channels, 256 steps, compiling"].append(time.perf_counter() - start)
        for name, cam in cams.items():
            cam()  # Compiles (after the caches were cleared).
            start = time.perf_counter()
            cam()
            seconds[name].append(time.perf_counter() - start)
    print(f"inspect on {jax.devices()[0].device_kind} ({jax.default_backend()}), {workdir} (step {run.step:,}), "
          f"median of {repeats}:")
    for name, times in seconds.items():
        what = name if "compiling" in name else f"{name}, 100 test images, compiled"
        print(f"  {what:60s} {statistics.median(times):7.3f} s  (min {min(times):.3f}, max {max(times):.3f})")


def main(argv):
    del argv
    if FLAGS.what == "torch":
        return versus_torch(FLAGS.batch_size, FLAGS.steps, FLAGS.repeats, FLAGS.epochs, FLAGS.dtype)
    if FLAGS.what == "zoo":
        return versus_torch_zoo(FLAGS.models, FLAGS.batch_size, FLAGS.repeats, FLAGS.repeat_seconds, FLAGS.dtype)
    if FLAGS.what == "conv_ops":
        return conv_ops(FLAGS.batch_size, FLAGS.repeats * 10)
    if FLAGS.what == "im2col":
        return im2col_versus_convolutions(FLAGS.batch_size, FLAGS.repeats * 4)
    if FLAGS.what == "devices":
        return versus_devices(FLAGS.batch_size, FLAGS.steps, FLAGS.repeats, [int(n) for n in FLAGS.device_counts])
    if FLAGS.what == "inspect":
        return inspect_speed(FLAGS.workdir, FLAGS.repeats)
    if FLAGS.what == "train_step":
        rate = train_step_rate(FLAGS.batch_size, FLAGS.steps, FLAGS.repeats)
        return print(f"train_step on {jax.device_count()} {jax.default_backend()} device(s): {rate:.1f} examples/s")
    runs = variants(FLAGS.what, FLAGS.batch_size, FLAGS.steps)
    examples = FLAGS.steps * FLAGS.batch_size * (FLAGS.seeds if FLAGS.what == "vmap_seeds" else 1)
    rates = {name: examples / t for name, t in interleaved_median_seconds(runs, FLAGS.repeats).items()}
    print(f"{FLAGS.what} on {jax.devices()[0].device_kind} ({jax.default_backend()}): batch {FLAGS.batch_size}, "
          f"median of {FLAGS.repeats} x {FLAGS.steps} steps")
    baseline = next(iter(rates.values()))
    for name, rate in rates.items():
        print(f"  {name:36s} {rate:10,.0f} examples/s  {rate / baseline:5.2f}x")


if __name__ == "__main__":
    cli.run(main, usage="python -m experiments.benchmark [--what=...] [--flags]")
