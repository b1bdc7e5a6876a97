"""Mixed precision: every model computed in bfloat16 (or float32) from float32 parameters, one policy for all.

`apply` casts the floating parameters and inputs to the compute dtype and
the model's outputs back to float32, so with "bfloat16" every convolution,
matrix product and activation computes in bfloat16 while the parameters,
the optimizer and the loss stay float32 (the usual recipe: big_vision's,
flax's ImageNet example's). The gradient of a cast is the cast back, so
`jax.grad` through `apply` gives float32 gradients of the float32
parameters. BatchNorm's statistics stay float32: Flax's BatchNorm (and
cnn_jax's fused kernels) reduce in float32, its running averages are not
cast, and it normalises in float32 before its output becomes bfloat16.
"""

import jax
import jax.numpy as jnp


def cast(tree, dtype: str):
    """`tree` with its floating arrays as `dtype`; integer ones (token ids, counters) unchanged."""
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def apply(apply_fn, variables: dict, inputs, dtype: str, **kwargs):
    """`apply_fn(variables, inputs, **kwargs)` computed in `dtype`: its parameters and inputs cast, its outputs
    (logits; with `mutable`, the updated collections too) as float32."""
    variables = {**variables, "params": cast(variables["params"], dtype)}
    return cast(apply_fn(variables, cast(inputs, dtype), **kwargs), "float32")
