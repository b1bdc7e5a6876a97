"""How a layer is computed: XLA's own operations, or cnn_jax's compiled CPU kernels.

    ffi.py      the compiled kernels (csrc/), built on first use and called through XLA's FFI
    im2col.py   a convolution as one matrix product (the patch matrix times the kernel matrix), for comparison
"""
