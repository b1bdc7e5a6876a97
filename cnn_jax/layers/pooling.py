"""Pooling layers: downsampling a `[batch, height, width, channels]` map (or a `[batch, length, channels]`
sequence) window by window.

Every pooling the seed documents name: max, average, L2 (Lp), Gaussian
distance-weighted average, mixed max-average, stochastic (Zeiler & Fergus
2013), spatial pyramid (He et al. 2014), fractional max (Graham 2014),
global average and global max (over time: Kim 2014's sentence CNN). Each
pools over every axis between the batch and the channels, so the same
layers serve images and sequences (`window`×`window` on an image is a
`window`-long window on a sequence). A pooling layer is a function of the map, or a linen module
called as `pool(x, train=...)` when it has parameters or randomness
(`apply_pool` calls either); `lookup(name, ...)` builds one from a name.

Windowed poolings take `window`, `stride` (default `window`) and `padding`
(added on each side) and give out = floor((in + 2·padding − window)/stride) + 1
per spatial axis (height and width, or length); an impossible setting raises `UserError` when the pooling
first sees a shape.

Poolings are functions, which `nn.intercept_methods` cannot see, so each one
reports its input, output and geometry to the watchers of `watch` (that is how
`cnn_jax.analysis.summary` lists them); nothing is reported outside a `watch` block.
"""

import contextlib
import dataclasses
import functools
import inspect
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.analysis import arithmetic
from cnn_jax.errors import UserError
from cnn_jax.kernels import dispatch, ffi

Pooling = Callable[[jnp.ndarray], jnp.ndarray] | nn.Module
"""A pooling layer: a function of `[b, h, w, c]` (or `[b, length, c]`), or a linen module called as
`pool(x, train=...)`."""


_watchers: list[Callable] = []


@contextlib.contextmanager
def watch(watcher: Callable):
    """Calls `watcher(kind, x, out, window, stride, padding)` for every pooling applied (traced) in the block.

    `kind` is the pooling's function name ("max_pool", ...); `window` and
    `stride` are ints, None for a pooling over the whole map (global,
    pyramid); `padding` is an int per side or [[top, bottom], [left, right]].
    Adaptive and fractional poolings, whose windows vary, report their widest
    window and their largest step.
    """
    _watchers.append(watcher)
    try:
        yield
    finally:
        _watchers.remove(watcher)


def _report(kind: str, x: jnp.ndarray, out: jnp.ndarray, window=None, stride=None, padding=0) -> jnp.ndarray:
    """`out`, after telling the watchers that `kind` pooled `x` into it (`stride` None: the window)."""
    stride = window if stride is None else stride
    for watcher in _watchers:
        watcher(kind, x, out, window, stride, padding)
    return out


def apply_pool(pool: Pooling | None, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    """`pool(x)`, telling a module-pooling whether it is training; None is no pooling."""
    if pool is None:
        return x
    return pool(x, train=train) if isinstance(pool, nn.Module) else pool(x)


def _spatial(x: jnp.ndarray) -> tuple[int, ...]:
    """The axes pooled over: all between the batch and the channels (height and width, or length)."""
    return tuple(range(1, x.ndim - 1))


def _output_shape(layer: str, x: jnp.ndarray, window: int, stride: int, padding: int) -> tuple[int, ...]:
    """The pooled spatial sizes of `x` `[b, ..., c]` (`arithmetic.pool_output_size`, which checks the settings)."""
    return tuple(arithmetic.pool_output_size(size, window, stride, padding, layer=layer) for size in x.shape[1:-1])


def _patches(layer: str, x: jnp.ndarray, window: int, stride: int | None, padding: int) -> jnp.ndarray:
    """The zero-padded windows of `x`, `[b, h, w, c] -> [b, h', w', c, window²]` (row-major within a window;
    `[b, length, c] -> [b, length', c, window]` on a sequence)."""
    stride = window if stride is None else stride
    out = _output_shape(layer, x, window, stride, padding)
    x = jnp.pad(x, ((0, 0), *((padding, padding),) * len(out), (0, 0)))
    spans = [slice(0, stride * (n - 1) + 1, stride) for n in out]

    def window_at(offset):
        return x[(slice(None), *(slice(i + s.start, i + s.stop, stride) for i, s in zip(offset, spans)))]

    return jnp.stack([window_at(offset) for offset in itertools.product(range(window), repeat=len(out))], axis=-1)


def _offsets(window: int, dims: int):
    """Every position of a window, row-major: the order in which tied maxima are preferred."""
    return list(itertools.product(range(window), repeat=dims))


def _window_slice(offset, out, stride) -> tuple:
    """The index of every window's element at `offset`, in a padded map whose windows give `out` outputs."""
    return (slice(None), *(slice(i, i + stride * (n - 1) + 1, stride) for i, n in zip(offset, out)), slice(None))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _windowed_max(x: jnp.ndarray, window: int, stride: int, pads: tuple) -> jnp.ndarray:
    """Max over `window`-wide windows at `stride` of `x` padded with −inf by `pads` ((low, high) per spatial axis).

    XLA's windowed reduction computes this, but on CPU its gradient
    (select-and-scatter) is slow: 0.27 s for a 3×3 stride-1 pooling of
    128×14×14×192 against 0.02 s forward (BENCHMARKS.md). Here the forward pass
    keeps each window's winner (the first maximum, row-major, as
    select-and-scatter picks) as an int8, and the backward pass gathers the
    output gradient at the winners, offset by offset: each is one elementwise
    loop XLA fuses.
    """
    return _windowed_max_fwd(x, window, stride, pads)[0]


def _windowed_max_fwd(x, window, stride, pads):
    # The barrier keeps XLA from fusing x's producer (a normalisation, a concatenation) into each window's slice,
    # which computed it once per window position (a 3×3 pooling in GoogLeNet: 9 times, 0.3 s a step).
    padded = jax.lax.optimization_barrier(jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf))
    out = [(n - window) // stride + 1 for n in padded.shape[1:-1]]
    best, winner = None, None
    for code, offset in enumerate(_offsets(window, len(out))):
        value = padded[_window_slice(offset, out, stride)]
        if best is None:
            best, winner = value, jnp.zeros(value.shape, jnp.int8)
        else:
            better = value > best  # Strictly: the first of tied maxima keeps the window.
            best, winner = jnp.where(better, value, best), jnp.where(better, jnp.int8(code), winner)
    return best, (winner, padded.shape)


def _windowed_max_bwd(window, stride, pads, residuals, dy):
    """Each padded input position p gathers dy from the windows it won: window o took offset i where o·stride + i = p.
    dy and the winners are spread to input resolution (stride − 1 zeros between outputs) and padded by window − 1,
    so each offset is one slice of them and the whole gradient one fused loop."""
    winner, padded_shape = residuals
    out, sizes = dy.shape[1:-1], padded_shape[1:-1]
    # After the spread, output o sits at window − 1 + o·stride; past the end, up to the padded map's size + window − 1.
    spread = [(0, 0, 0), *((window - 1, n - (o - 1) * stride - 1, stride - 1) for o, n in zip(out, sizes)), (0, 0, 0)]
    dy_spread, winner_spread = jax.lax.optimization_barrier(
        (jax.lax.pad(dy, jnp.zeros((), dy.dtype), spread), jax.lax.pad(winner, jnp.int8(-1), spread)))
    dx = None
    for code, offset in enumerate(_offsets(window, len(out))):
        at = (slice(None), *(slice(window - 1 - i, window - 1 - i + n) for i, n in zip(offset, sizes)), slice(None))
        taken = jnp.where(winner_spread[at] == code, dy_spread[at], 0)
        dx = taken if dx is None else dx + taken
    return (dx[(slice(None), *(slice(lo, n - hi) for (lo, hi), n in zip(pads, sizes)), slice(None))],)


_windowed_max.defvjp(_windowed_max_fwd, _windowed_max_bwd)


def _max_over_windows(x: jnp.ndarray, window: int, stride: int, pads: tuple) -> jnp.ndarray:
    """`_windowed_max`, computed on oneDNN where the compiled kernels take it (`dispatch.max_pools_on_onednn`):
    GoogLeNet's poolings ran at about a third of memory speed in XLA's fusions (BENCHMARKS.md)."""
    if dispatch.max_pools_on_onednn(x, window):
        return ffi.max_pool(x, window, stride, pads)
    return _windowed_max(x, window, stride, pads)


def max_pool(x: jnp.ndarray, window: int = 2, stride: int | None = None, padding: int = 0) -> jnp.ndarray:
    """Max-pooling over `window`×`window` patches, `[b, h, w, c] -> [b, h', w', c]` (`[b, l, c] -> [b, l', c]`).

    `stride` defaults to `window` (PyTorch's convention); `padding` pads each
    side with -inf. Output size is floor((h + 2·padding − window) / stride) + 1.

    Non-overlapping windows that tile the input exactly (the common 2×2,
    stride 2 case) are computed as a reshape and a max: XLA fuses that and its
    gradient into a few elementwise loops, where the general windowed reduction
    (and its select-and-scatter gradient) is about twice as slow on CPU. The
    two differ only in how a gradient is shared between tied maxima. Other
    windows (overlapping, padded) are oneDNN's max-pooling where the compiled
    kernels run, else `_windowed_max`: both give select-and-scatter's gradient,
    `_windowed_max` 20× faster than XLA computes it, oneDNN 1.6-2.4× faster still.
    """
    stride = window if stride is None else stride
    _output_shape("max_pool", x, window, stride, padding)
    tiles = _tiles(x, window, stride, padding)
    if tiles is not None:
        out = tiles.max(axis=_tile_axes(x))
    else:
        out = _max_over_windows(x, window, stride, ((padding, padding),) * len(_spatial(x)))
    return _report("max_pool", x, out, window, stride, padding)


def _tiles(x: jnp.ndarray, window: int, stride: int, padding: int) -> jnp.ndarray | None:
    """`x` `[b, h, w, c]` as `[b, h/window, window, w/window, window, c]` where its windows tile it exactly (stride
    = window, no padding; a sequence's alike), else None: a pooling is then a reduction over `_tile_axes`, which XLA
    fuses with its gradient into a few elementwise loops."""
    sizes = x.shape[1:-1]
    if stride != window or padding != 0 or any(n % window for n in sizes):
        return None
    return x.reshape(x.shape[0], *[part for n in sizes for part in (n // window, window)], x.shape[-1])


def _tile_axes(x: jnp.ndarray) -> tuple[int, ...]:
    """The axes of `_tiles(x, ...)` that run within a window."""
    return tuple(range(2, 2 * len(_spatial(x)) + 1, 2))


max_pool_2x2 = functools.partial(max_pool, window=2, stride=2)


def avg_pool(x: jnp.ndarray, window: int = 2, stride: int | None = None, padding: int = 0) -> jnp.ndarray:
    """Average over `window`×`window` patches, `[b, h, w, c] -> [b, h', w', c]` (or a sequence's windows).

    Padding is zeros that count in the average (PyTorch's default
    `count_include_pad=True`), so every output divides by window² (window).
    """
    stride = window if stride is None else stride
    _output_shape("avg_pool", x, window, stride, padding)
    tiles = _tiles(x, window, stride, padding)  # Its gradient a broadcast, not a pad per window position.
    out = (_patches("avg_pool", x, window, stride, padding) if tiles is None else tiles).mean(
        axis=-1 if tiles is None else _tile_axes(x))
    return _report("avg_pool", x, out, window, stride, padding)


def lp_pool(
    x: jnp.ndarray, window: int = 2, stride: int | None = None, padding: int = 0, p: float = 2.0
) -> jnp.ndarray:
    """Lp-pooling, (Σ |x|^p)^(1/p) over each `window`×`window` patch, `[b, h, w, c] -> [b, h', w', c]`.

    p = 2 is the seeds' L2-norm pooling; p → ∞ approaches max-pooling. Padding
    is zeros, which add nothing to the sum. Needs p ≥ 1.
    """
    if p < 1:
        raise UserError(f"lp_pool: p={p} is below 1, where |x|^p has no gradient at 0; use p ≥ 1")
    total = (jnp.abs(_patches("lp_pool", x, window, stride, padding)) ** p).sum(axis=-1)
    # An all-zero window (common after ReLU) has an infinite slope of the root; keep its gradient 0, not NaN.
    nonzero = total > 0
    out = jnp.where(nonzero, jnp.where(nonzero, total, 1.0) ** (1 / p), 0.0)
    return _report("lp_pool", x, out, window, stride, padding)


def gaussian_weights(window: int, sigma: float, dims: int = 2) -> np.ndarray:
    """Weights exp(−d²/(2σ²)) of each cell by its distance d from the window centre, summing to 1, `[window^dims]`
    (row-major, as `_patches` orders a window's cells)."""
    offsets = np.indices((window,) * dims).reshape(dims, -1) - (window - 1) / 2
    weights = np.exp(-(offsets**2).sum(axis=0) / (2 * sigma**2))
    return weights / weights.sum()


def gaussian_pool(
    x: jnp.ndarray, window: int = 3, stride: int | None = None, padding: int = 0, sigma: float = 1.0
) -> jnp.ndarray:
    """Distance-weighted average around each window's centre, `[b, h, w, c] -> [b, h', w', c]`.

    Weights are `gaussian_weights(window, sigma)`, σ in pixels; σ = 1 on the
    default 3×3 window gives the corners e^−1 of the centre's weight, and σ → ∞
    is `avg_pool`. Padding is zeros that take their weight, as in `avg_pool`.
    (A 2×2 window has all cells equally far from its centre: any σ averages.)
    """
    if sigma <= 0:
        raise UserError(f"gaussian_pool: sigma={sigma} must be positive; use a width in pixels such as 1.0")
    patches = _patches("gaussian_pool", x, window, stride, padding)
    out = patches @ jnp.asarray(gaussian_weights(window, sigma, len(_spatial(x))), patches.dtype)
    return _report("gaussian_pool", x, out, window, stride, padding)


def global_avg_pool(x: jnp.ndarray) -> jnp.ndarray:
    """Mean over all positions, `[b, h, w, c] -> [b, c]` (`[b, l, c] -> [b, c]`): the head of networks without FC
    layers."""
    return _report("global_avg_pool", x, x.mean(axis=_spatial(x)))


def global_max_pool(x: jnp.ndarray) -> jnp.ndarray:
    """Max over all positions, `[b, h, w, c] -> [b, c]`; on a sequence `[b, l, c]`, max-over-time pooling (Kim 2014):
    each feature map's strongest response, wherever it is, so texts of any length give one vector."""
    return _report("global_max_pool", x, x.max(axis=_spatial(x)))


def _ceil_div(a, m):
    """ceil(a / m) for integers (NumPy or JAX), without going through floats."""
    return -(-a // m)


def _max_over_intervals(x: jnp.ndarray, starts, ends, width: int, axis: int) -> jnp.ndarray:
    """Max of `x` over index intervals [starts[k], ends[k]) along `axis`, which becomes len(starts) long.

    `starts`/`ends` are integer arrays (static or traced); `width` bounds
    ends − starts. Each interval is gathered as `width` indices, those past
    its end masked to −inf so they neither win nor take gradient.
    """
    indices = starts[:, None] + jnp.arange(width)  # [n, width]
    gathered = jnp.take(x, jnp.minimum(indices, x.shape[axis] - 1), axis=axis)
    inside = (indices < ends[:, None]).reshape(indices.shape + (1,) * (x.ndim - axis - 1))
    return jnp.where(inside, gathered, -jnp.inf).max(axis=axis + 1)


def _max_over_grid(x: jnp.ndarray, bounds) -> jnp.ndarray:
    """Max of `x` `[..., h, w, c]` over a grid of (start, end, width) intervals, one per spatial axis (the axes
    before the channels: rows and columns, or a sequence's positions); max is separable."""
    for k, axis_bounds in enumerate(bounds):
        x = _max_over_intervals(x, *axis_bounds, axis=x.ndim - 1 - len(bounds) + k)
    return x


def _adaptive_bins(size: int, n: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Starts, ends and widest width of the n bins [floor(i·size/n), ceil((i+1)·size/n)) covering 0..size."""
    i = np.arange(n)
    starts, ends = i * size // n, _ceil_div((i + 1) * size, n)
    return starts, ends, int((ends - starts).max())


def spatial_pyramid_pool(x: jnp.ndarray, levels: Sequence[int] = (1, 2, 4)) -> jnp.ndarray:
    """Spatial pyramid pooling (He et al. 2014): a fixed-length vector from a map of any size.

    `[b, h, w, c] -> [b, c·Σ n²]`. Level n max-pools into an n×n grid of bins;
    each level's `[b, n, n, c]` is flattened row-major and the levels are
    concatenated in order (on a sequence, n bins: `[b, l, c] -> [b, c·Σ n]`). Bins are the exact adaptive partition (as PyTorch's
    `AdaptiveMaxPool2d`): bin i spans [floor(i·h/n), ceil((i+1)·h/n)), so there
    are always n bins covering the input, for any h ≥ 1. The paper's
    window ceil(h/n), stride floor(h/n) gives fewer than n bins for some sizes
    (h = 7, n = 4 gives 6).
    """
    if not levels or min(levels) < 1:
        raise UserError(f"spatial_pyramid_pool: levels {tuple(levels)} must be positive grid sizes, such as (1, 2, 4)")
    pooled = [_max_over_grid(x, [_adaptive_bins(size, n) for size in x.shape[1:-1]]).reshape(x.shape[0], -1)
              for n in levels]
    return _report("spatial_pyramid_pool", x, jnp.concatenate(pooled, axis=-1))


class MixedPool(nn.Module):
    """Mixed pooling, mix·max + (1 − mix)·avg over each window, `[b, h, w, c] -> [b, h', w', c]`.

    Max pads with −inf and average with counted zeros, as `max_pool` and
    `avg_pool`. With `learned`, mix = sigmoid(a parameter "mix_logit") starting
    at `mix`, trained with the network.
    """

    window: int = 2
    stride: int | None = None
    padding: int = 0
    mix: float = 0.5
    learned: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        if not (0 < self.mix < 1 if self.learned else 0 <= self.mix <= 1):
            bounds = "(0, 1) when learned" if self.learned else "[0, 1]"
            raise UserError(f"MixedPool: mix={self.mix} must be in {bounds}; use e.g. 0.5")
        stride = self.window if self.stride is None else self.stride
        _output_shape("MixedPool", x, self.window, stride, self.padding)  # So an error names MixedPool.
        mix = self.mix
        if self.learned:
            logit = math.log(self.mix / (1 - self.mix))
            mix = nn.sigmoid(self.param("mix_logit", lambda _: jnp.asarray(logit, jnp.float32)))
        pooled_max = max_pool(x, self.window, stride, self.padding)
        return mix * pooled_max + (1 - mix) * avg_pool(x, self.window, stride, self.padding)


class StochasticPool(nn.Module):
    """Stochastic pooling (Zeiler & Fergus 2013), `[b, h, w, c] -> [b, h', w', c]`.

    Within each window, activation a_i has probability p_i = a_i / Σ a_j. In
    training one activation per window (and channel) is sampled with those
    probabilities from the "dropout" RNG stream; at test the output is the
    expectation Σ p_i a_i. Activations are meant to be non-negative (after
    ReLU): negative ones count as 0, as does padding, and an all-zero window
    gives 0.
    """

    window: int = 2
    stride: int | None = None
    padding: int = 0

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        a = nn.relu(_patches("StochasticPool", x, self.window, self.stride, self.padding))
        if train:
            # log 0 = −inf: a zero is never drawn unless the whole window is 0, and then any draw is 0.
            chosen = jax.random.categorical(self.make_rng("dropout"), jnp.log(a), axis=-1)
            out = jnp.take_along_axis(a, chosen[..., None], axis=-1)[..., 0]
        else:
            total = a.sum(axis=-1)
            out = (a**2).sum(axis=-1) / jnp.where(total > 0, total, 1.0)
        return _report("stochastic_pool", x, out, self.window, self.stride, self.padding)


def fractional_boundaries(size: int, out: int, offset: int | jnp.ndarray) -> jnp.ndarray:
    """Graham's increasing sequence 0 = b_0 < … < b_out = size, `[out + 1]`.

    Graham's b_i = ceil(α(i + u)) − ceil(αu), α = size/out, u in [0, 1),
    depends on u only through offset = ceil(size·u) mod out; written as
    ceil((size·i + offset)/out) − ceil(offset/out) it stays in integers, so
    rounding can never make a step 0 or 3. Every step is floor(α) or ceil(α).
    """
    return _ceil_div(size * jnp.arange(out + 1) + offset, out) - _ceil_div(offset, out)


class FractionalMaxPool(nn.Module):
    """Fractional max-pooling (Graham 2014), `[b, h, w, c] -> [b, floor(h/ratio), floor(w/ratio), c]` (on a
    sequence, `[b, l, c] -> [b, floor(l/ratio), c]`).

    Rows (and columns) are split at `fractional_boundaries` into disjoint
    regions of 1 or 2 cells, each max-pooled (α = h/out lies in [ratio, 2)
    except on inputs of a few pixels, which get regions of 2 or 3); with
    `overlapping` each region also takes the next boundary's cell (Graham's
    overlapping variant). In training every image draws its own row and column
    offsets uniformly from the "dropout" RNG stream; at test every image uses
    the fixed offset 0, b_i = ceil(i·h/out).
    """

    ratio: float = math.sqrt(2)
    overlapping: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        if not 1 < self.ratio < 2:
            raise UserError(f"FractionalMaxPool: ratio={self.ratio} must be in (1, 2); use e.g. sqrt(2) ≈ 1.414")
        sizes = x.shape[1:-1]
        outs = [arithmetic.fractional_pool_output_size(size, self.ratio) for size in sizes]
        if min(outs) < 1:
            raise UserError(
                f"FractionalMaxPool: input {'×'.join(map(str, sizes))} gives out = floor(in/ratio) = "
                f"floor({min(sizes)}/{self.ratio:.4g}) = 0; "
                f"needs inputs of at least {math.ceil(self.ratio)} pixels per side, so pool less earlier"
            )
        shape = (x.shape[0], len(sizes))
        offsets = (jax.random.randint(self.make_rng("dropout"), shape, 0, jnp.array(outs)) if train
                   else jnp.zeros(shape, int))
        grow = int(self.overlapping)

        def bounds(size, out, offset):
            edges = fractional_boundaries(size, out, offset)
            return edges[:-1], jnp.minimum(edges[1:] + grow, size), _ceil_div(size, out) + grow

        def pool_image(image, offset):  # image [h, w, c] (or [l, c]), offset [spatial axes]
            return _max_over_grid(image, [bounds(size, out, offset[k]) for k, (size, out) in enumerate(zip(sizes, outs))])

        widest = _ceil_div(sizes[0], outs[0])  # Regions are floor(α) or ceil(α) rows, α = h/out.
        return _report("fractional_max_pool", x, jax.vmap(pool_image)(x, offsets), widest + grow, widest)


POOLINGS: dict[str, Callable[..., Pooling]] = {
    "max": max_pool,
    "avg": avg_pool,
    "l2": lp_pool,  # p = 2 unless the option p says otherwise.
    "gaussian": gaussian_pool,
    "mixed": MixedPool,
    "mixed_learned": functools.partial(MixedPool, learned=True),
    "stochastic": StochasticPool,
    "spp": spatial_pyramid_pool,
    "fractional": FractionalMaxPool,
    "global_avg": global_avg_pool,
    "global_max": global_max_pool,
}
"""Each pooling by name: a function of `x` (and its settings), or a linen module class."""


def lookup(name: str, window: int = 2, stride: int | None = None, padding: int = 0, **options) -> Pooling:
    """The pooling registered as `name`, set to `window`, `stride`, `padding` and its own `options`.

    Functions come back with their settings bound (a function of `x`), modules
    as instances. "spp", "fractional", "global_avg" and "global_max" have no
    window, so those must stay at their defaults. Options are the pooling's own keywords: `p`
    ("l2"), `sigma` ("gaussian"), `mix` ("mixed", "mixed_learned"), `levels`
    ("spp"), `ratio` and `overlapping` ("fractional"). "gaussian" at the
    default window 2 is plain averaging (all four cells are equally far from
    the centre): give it window=3 or more.
    """
    if name not in POOLINGS:
        raise UserError(f"unknown pooling '{name}': choose one of {', '.join(POOLINGS)}")
    pooling = POOLINGS[name]
    arguments = set(inspect.signature(pooling).parameters)
    parameters = arguments - {"x", "parent", "name"}
    settings = {"window": window, "stride": stride, "padding": padding}
    if "window" not in parameters:
        if (window, stride, padding) != (2, None, 0):
            raise UserError(f"pooling '{name}' has no window, stride or padding; leave them unset")
        settings = {}
    unknown = sorted(set(options) - parameters)
    if unknown:
        choices = ", ".join(sorted(parameters - set(settings))) or "none"
        raise UserError(f"pooling '{name}' has no option {', '.join(unknown)}; its options are: {choices}")
    built = functools.partial(pooling, **settings, **options)
    # Functions stay functions of `x`; module classes (which take no `x`) are built now.
    return built if "x" in arguments else built()


@dataclasses.dataclass(frozen=True)
class Description:
    """What a pooling computes: its kind (the `POOLINGS` function or module it runs) and its settings.

    `window` and `stride` are None for the poolings without a window (spp,
    fractional, global average); a stride left to default is the window.
    `options` are the pooling's other settings, as sorted (name, value) pairs.
    """

    kind: str
    window: int | None = None
    stride: int | None = None
    padding: int = 0
    options: tuple[tuple[str, Any], ...] = ()


_KINDS = {pooling: name for name, pooling in POOLINGS.items() if not isinstance(pooling, functools.partial)}


def describe(pool: Pooling | None) -> Description | None:
    """What `pool` computes, if it is one of this module's poolings; None for no pooling or any other callable.

    A pooling function, a `functools.partial` of one with its settings bound
    by keyword (what `lookup` returns), and a pooling module all describe
    themselves, so equal poolings built different ways have equal
    descriptions: `describe(lookup("max", 2)) == describe(max_pool_2x2)`.
    """
    function, bound = pool, {}
    if isinstance(pool, functools.partial):
        if pool.args:  # A positional argument would be the map itself, or a module field: not a setting by name.
            return None
        function, bound = pool.func, pool.keywords
    if isinstance(function, nn.Module):
        function, bound = type(function), {f.name: getattr(function, f.name) for f in dataclasses.fields(function)
                                           if f.name not in ("parent", "name")}
    if not callable(function) or function not in _KINDS:
        return None
    parameters = inspect.signature(function).parameters
    settings = {name: p.default for name, p in parameters.items() if name not in ("x", "parent", "name")}
    settings.update({name: value for name, value in bound.items() if name in settings})
    window, stride, padding = (settings.pop(name, None) for name in ("window", "stride", "padding"))
    stride = window if stride is None else stride
    return Description(_KINDS[function], window, stride, padding or 0, tuple(sorted(settings.items())))


def max_pool_ceil(x: jnp.ndarray, window: int, stride: int) -> jnp.ndarray:
    """PyTorch's `MaxPool2d(window, stride, ceil_mode=True)`: ceil((h − window) / stride) + 1 rows.

    The last window may hang over the bottom and right edges; the overhang is
    padding that never wins the max.
    """
    pads = []
    for size in x.shape[1:3]:
        out = arithmetic.pool_output_size(size, window, stride, ceil_mode=True, layer="max_pool_ceil")
        pads.append((0, max((out - 1) * stride + window - size, 0)))
    out = _max_over_windows(x, window, stride, tuple(pads))
    return _report("max_pool_ceil", x, out, window, stride, [list(p) for p in pads])


def adaptive_avg_pool(x: jnp.ndarray, size: int) -> jnp.ndarray:
    """PyTorch's `adaptive_avg_pool2d(x, size)`: `[b, h, w, c] -> [b, size, size, c]`.

    Output cell i averages rows floor(i·h/size) to ceil((i+1)·h/size); windows
    may overlap, and a map smaller than `size` is repeated. It gives a
    classifier a fixed grid whatever the input size (AlexNet, VGG).
    """
    if min(x.shape[1:3]) < 1:
        raise UserError(f"adaptive_avg_pool: the feature map is {x.shape[1]}×{x.shape[2]}, nothing is left to pool; "
                        "the input image is too small for this network: use a larger image")

    def averaging(n: int) -> np.ndarray:
        weights = np.zeros((size, n), np.float32)  # In x's dtype when applied (bfloat16 with mixed precision).
        for i in range(size):
            start, stop = (i * n) // size, -((-(i + 1) * n) // size)
            weights[i, start:stop] = 1.0 / (stop - start)
        return weights

    rows = averaging(x.shape[1])
    out = jnp.einsum("ih,bhwc,jw->bijc", rows.astype(x.dtype), x, averaging(x.shape[2]).astype(x.dtype))
    widest = int((rows > 0).sum(axis=1).max())
    return _report("adaptive_avg_pool", x, out, widest, max(1, _ceil_div(x.shape[1], size)))
