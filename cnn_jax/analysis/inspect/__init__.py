"""Looking inside a trained network: what its layers compute, what its filters are, and which pixels (time steps,
tokens) decide.

    taps.py         every spatial layer's output from one forward pass, by name, and the pass with one output changed
    activations.py  activation maps, and each layer's sparsity and mean over many images
    filters.py      kernels as pictures, kernel norms, hand-made edge filters, and how edge-like a layer's filters are
    featvis.py      feature visualisation: images optimised from noise to excite a channel, a neuron or a class
    attribution.py  which pixels, time steps or tokens decide a class: saliency, SmoothGrad, gradient × input,
                    integrated gradients, Grad-CAM, occlusion
    sanity.py       cascading randomisation: do the maps depend on what the network learned?
    figures.py      the pictures (matplotlib) and the page that gathers them
    report.py       what `experiments.inspect` computes, draws and writes for a run
    snapshot.py     the pictures `experiments.train --log_images` logs to TensorBoard

Everything runs the model in test mode on XLA's own operations
(`taps.forward`), which every JAX transformation accepts.
"""
