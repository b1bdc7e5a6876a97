"""The zoo's networks in PyTorch, layer for layer, for the benchmarks: `build(name, image_shape, num_classes)`.

Each module mirrors a cnn_jax model's structure and names (a torch submodule
`stage1_block1.ConvBN_0.Conv_0` is the Flax scope `stage1_block1/ConvBN_0/Conv_0`),
so `load_flax(net, variables)` copies a Flax initialisation into it, value for
value: the two sides start from the same weights, and equal logits prove the
same architecture (tests/test_torch_models.py). Maps are NCHW here; a tensor
flattened for a dense layer is flattened in NHWC order, as Flax flattens it.
It needs PyTorch: pip install -e '.[bench]'.

cnn_jax's layers and models (which import JAX and Flax) are imported where a
mirror needs them, so the seed network's PyTorch run (`experiments.torch_reference`)
starts without JAX.
"""

import numpy as np
import torch
from torch import nn

from cnn_jax.errors import UserError


def norm_layer(features: int, epsilon: float = 1e-5) -> nn.BatchNorm2d:
    """PyTorch's BatchNorm with its default momentum (0.1) and epsilon: cnn_jax's (`layers.blocks.MOMENTUM`, 0.9 in
    Flax's sense, and `EPSILON`) were chosen to be these."""
    return nn.BatchNorm2d(features, epsilon)


def flatten_nhwc(x: torch.Tensor) -> torch.Tensor:
    """[b, c, h, w] -> [b, h·w·c] in Flax's (NHWC) order."""
    return x.permute(0, 2, 3, 1).flatten(1)


def conv_padding(padding) -> int:
    """A cnn_jax padding as PyTorch's: zeros per side. "SAME", which a spec leaves where its zeros would differ
    from side to side (a stride, an even kernel), has no PyTorch equal."""
    if isinstance(padding, str):
        raise UserError(f"the PyTorch mirror has no '{padding}' padding: give the convolution its zeros per side")
    return padding


ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}
"""The activations mirrored, by their `cnn_jax.layers.activations` names (the others differ in PyTorch, or are not
there: Flax's gelu is the tanh approximation)."""


class ConvBlock(nn.Module):
    """`cnn_jax.layers.ConvBlock`: conv (bias) -> BatchNorm? -> activation -> pooling?"""

    def __init__(self, cin: int, features: int, kernel: int, stride: int = 1, padding=0, batch_norm: bool = True,
                 activation=torch.relu, pool: nn.Module | None = None):
        super().__init__()
        self.Conv_0 = nn.Conv2d(cin, features, kernel, stride, conv_padding(padding))
        self.BatchNorm_0 = norm_layer(features) if batch_norm else None
        self.activation, self.pool = activation, pool

    def forward(self, x):
        x = self.Conv_0(x)
        if self.BatchNorm_0 is not None:
            x = self.BatchNorm_0(x)
        x = self.activation(x)
        return self.pool(x) if self.pool is not None else x


class DenseHead(nn.Module):
    """`cnn_jax.layers.DenseHead`: flatten (NHWC order) -> [dense -> activation -> dropout]* -> dense."""

    def __init__(self, inputs: int, num_classes: int, hidden=(), activation=torch.relu, dropout: float = 0.0):
        super().__init__()
        widths = [inputs, *hidden]
        for i, width in enumerate(hidden):
            setattr(self, f"Dense_{i}", nn.Linear(widths[i], width))
        setattr(self, f"Dense_{len(hidden)}", nn.Linear(widths[-1], num_classes))
        self.hidden, self.activation, self.dropout = len(hidden), activation, nn.Dropout(dropout)

    def forward(self, x):
        x = flatten_nhwc(x) if x.ndim == 4 else x
        for i in range(self.hidden):
            x = self.dropout(self.activation(getattr(self, f"Dense_{i}")(x)))
        return getattr(self, f"Dense_{self.hidden}")(x)


class ConvBN(nn.Module):
    """`cnn_jax.layers.ConvBN`: conv (no bias, kernel // 2 padding) -> BatchNorm -> ReLU?"""

    def __init__(self, cin: int, features: int, kernel: int, stride: int = 1, relu: bool = True,
                 epsilon: float = 1e-5):
        super().__init__()
        self.Conv_0 = nn.Conv2d(cin, features, kernel, stride, kernel // 2, bias=False)
        self.BatchNorm_0 = norm_layer(features, epsilon)
        self.relu = relu

    def forward(self, x):
        x = self.BatchNorm_0(self.Conv_0(x))
        return torch.relu(x) if self.relu else x


class Sequence(nn.Module):
    """Named layers run in order (nn.Sequential names its layers 0, 1, ...; these keep Flax's names)."""

    def __init__(self, layers: dict):
        super().__init__()
        self.order = list(layers)
        for name, layer in layers.items():
            setattr(self, name, layer)

    def forward(self, x):
        for name in self.order:
            x = getattr(self, name)(x)
        return x


def pattern_net(model, image_shape, num_classes: int) -> Sequence:
    """A 2-D `spec.PatternNet` (convolution and max/avg pooling stages, then dense layers)."""
    from cnn_jax.models import spec

    if model.activation not in ACTIVATIONS:
        raise UserError(f"the PyTorch mirror has no '{model.activation}': use one of {', '.join(ACTIVATIONS)}")
    (height, width, channels), activation = image_shape, ACTIVATIONS[model.activation]
    layers, index = {}, 0
    for stage in model.stages:
        pool = None
        if stage.pool is not None:
            if stage.pool not in ("max", "avg") or stage.pool_padding:
                raise UserError(f"the PyTorch mirror has no '{stage.pool}' pooling with padding {stage.pool_padding}")
            kind = nn.MaxPool2d if stage.pool == "max" else nn.AvgPool2d
            pool = kind(stage.pool_window, stage.pool_stride or stage.pool_window)
        for i, features in enumerate(stage.features):
            padding = spec._conv_padding(stage)
            layers[f"ConvBlock_{index}"] = ConvBlock(channels, features, stage.kernel_size, stage.strides, padding,
                                                     model.batch_norm, activation,
                                                     pool if i == len(stage.features) - 1 else None)
            channels, index = features, index + 1
            pad = conv_padding(padding)
            height, width = ((n + 2 * pad - stage.kernel_size) // stage.strides + 1 for n in (height, width))
        if pool is not None:
            height, width = ((n - pool.kernel_size) // pool.stride + 1 for n in (height, width))
    layers["DenseHead_0"] = DenseHead(height * width * channels, num_classes, model.hidden, activation, model.dropout)
    return Sequence(layers)


class ConvNet(Sequence):
    """`cnn_jax.models.ConvNet` (the seed network): [conv 5×5 -> BN -> ReLU -> max 2×2] * 2 -> dense."""

    def __init__(self, image_shape, num_classes: int, features=(16, 32), kernel: int = 5):
        (height, _, channels), layers = image_shape, {}
        for i, width in enumerate(features):
            layers[f"ConvBlock_{i}"] = ConvBlock(channels, width, kernel, 1, kernel // 2, pool=nn.MaxPool2d(2))
            channels, height = width, height // 2
        super().__init__({**layers, "DenseHead_0": DenseHead(channels * height * height, num_classes)})


class LeNet5(nn.Module):
    """`cnn_jax.models.lenet.LeNet5` at up to 32×32 (its adaptive average is then the identity)."""

    def __init__(self, image_shape, num_classes: int):
        super().__init__()
        height, _, channels = image_shape
        if height > 32:
            raise UserError("the PyTorch LeNet-5 mirrors images of at most 32×32")
        self.C1 = nn.Conv2d(channels, 6, 5, padding=2 if height < 32 else 0)
        self.C3 = nn.Conv2d(6, 16, 5)
        self.C5 = nn.Conv2d(16, 120, 5)
        self.F6 = nn.Linear(120, 84)
        self.output = nn.Linear(84, num_classes)

    def forward(self, x):
        x = nn.functional.avg_pool2d(torch.tanh(self.C1(x)), 2)
        x = nn.functional.avg_pool2d(torch.tanh(self.C3(x)), 2)
        x = torch.tanh(self.C5(x))
        return self.output(torch.tanh(self.F6(flatten_nhwc(x))))


class AllConvNet(nn.Module):
    """`cnn_jax.models.allconv.AllConvNet` (All-CNN-C)."""

    def __init__(self, image_shape, num_classes: int, widths=(96, 192)):
        super().__init__()
        channels, blocks = image_shape[2], []
        for width in widths:
            for stride in (1, 1, 2):
                blocks.append(ConvBlock(channels, width, 3, stride, 1, batch_norm=False))
                channels = width
        blocks += [ConvBlock(channels, channels, 3, 1, 0, batch_norm=False),
                   ConvBlock(channels, channels, 1, 1, 0, batch_norm=False)]
        for i, block in enumerate(blocks):
            setattr(self, f"ConvBlock_{i}", block)
        self.Conv_0 = nn.Conv2d(channels, num_classes, 1)
        self.blocks, self.input_dropout, self.dropout = len(blocks), nn.Dropout(0.2), nn.Dropout(0.5)

    def forward(self, x):
        x = self.input_dropout(x)
        for i in range(self.blocks):
            x = getattr(self, f"ConvBlock_{i}")(x)
            if i in (2, 5):
                x = self.dropout(x)
        return self.Conv_0(x).mean(dim=(2, 3))


class BasicBlock(nn.Module):
    """`cnn_jax.models.resnet.BasicBlock`: relu(3×3 -> 3×3 + shortcut)."""

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        self.ConvBN_0 = ConvBN(cin, width, 3, stride)
        self.ConvBN_1 = ConvBN(width, width, 3, relu=False)
        self.shortcut = ConvBN(cin, width, 1, stride, relu=False) if stride != 1 or cin != width else None

    def forward(self, x):
        y = self.ConvBN_1(self.ConvBN_0(x))
        return torch.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class ResNet(nn.Module):
    """`cnn_jax.models.resnet.ResNet` with basic blocks (ResNet-18/34)."""

    def __init__(self, image_shape, num_classes: int, stage_sizes=(2, 2, 2, 2)):
        from cnn_jax.models import SMALL_INPUT

        super().__init__()
        height, _, channels = image_shape
        self.large = height >= SMALL_INPUT
        self.stem = ConvBN(channels, 64, 7 if self.large else 3, 2 if self.large else 1)
        self.blocks, channels = [], 64
        for stage, num_blocks in enumerate(stage_sizes):
            for i in range(num_blocks):
                name, width = f"stage{stage + 1}_block{i + 1}", 64 * 2**stage
                setattr(self, name, BasicBlock(channels, width, 2 if stage > 0 and i == 0 else 1))
                self.blocks.append(name)
                channels = width
        self.Dense_0 = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.stem(x)
        if self.large:
            x = nn.functional.max_pool2d(x, 3, 2, 1)
        for name in self.blocks:
            x = getattr(self, name)(x)
        return self.Dense_0(x.mean(dim=(2, 3)))


class Inception(nn.Module):
    """`cnn_jax.models.googlenet.Inception`: 1×1 | 1×1 -> 3×3 | 1×1 -> 3×3 | 3×3 max -> 1×1, concatenated."""

    def __init__(self, cin: int, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj):
        super().__init__()
        # In the order Flax names them: a branch's outer ConvBN is constructed before the inner one it is given.
        convs = [(cin, ch1x1, 1), (ch3x3red, ch3x3, 3), (cin, ch3x3red, 1), (ch5x5red, ch5x5, 3),
                 (cin, ch5x5red, 1), (cin, pool_proj, 1)]
        for i, (a, b, k) in enumerate(convs):
            setattr(self, f"ConvBN_{i}", ConvBN(a, b, k, epsilon=1e-3))
        self.channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x):
        c = [getattr(self, f"ConvBN_{i}") for i in range(6)]
        pooled = nn.functional.max_pool2d(x, 3, 1, 1)
        return torch.cat([c[0](x), c[1](c[2](x)), c[3](c[4](x)), c[5](pooled)], dim=1)


class GoogLeNet(nn.Module):
    """`cnn_jax.models.googlenet.GoogLeNet` without auxiliary classifiers."""

    def __init__(self, image_shape, num_classes: int):
        from cnn_jax.models import SMALL_INPUT, googlenet

        super().__init__()
        height, _, channels = image_shape
        self.large = height >= SMALL_INPUT
        self.conv1 = ConvBN(channels, 64, 7 if self.large else 3, 2 if self.large else 1, epsilon=1e-3)
        self.conv2 = ConvBN(64, 64, 1, epsilon=1e-3)
        self.conv3 = ConvBN(64, 192, 3, epsilon=1e-3)
        self.stages, channels = [], 192
        for stage, blocks in enumerate(googlenet.STAGES, start=3):
            names = []
            for i, widths in enumerate(blocks):
                block = Inception(channels, *widths)
                names.append(f"inception{stage}{'abcde'[i]}")
                setattr(self, names[-1], block)
                channels = block.channels
            self.stages.append(names)
        self.dropout, self.fc = nn.Dropout(0.2), nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.conv1(x)
        if self.large:
            x = nn.functional.max_pool2d(x, 3, 2, ceil_mode=True)
        x = self.conv3(self.conv2(x))
        for stage, names in enumerate(self.stages, start=3):
            x = nn.functional.max_pool2d(x, 3 if stage < 5 else 2, 2, ceil_mode=True)
            for name in names:
                x = getattr(self, name)(x)
        return self.fc(self.dropout(x.mean(dim=(2, 3))))


BUILDERS = {"convnet": ConvNet, "lenet5": LeNet5, "allconv": AllConvNet, "resnet18": ResNet, "googlenet": GoogLeNet}
"""The zoo models mirrored here; any 2-D spec of convolutions and max/avg pooling is mirrored too (`pattern_net`)."""


def build(name: str, image_shape, num_classes: int) -> nn.Module:
    """The PyTorch mirror of cnn_jax model `name` (a zoo name of `BUILDERS` or a spec) for images of `image_shape`."""
    from cnn_jax.models import spec

    if name in BUILDERS:
        return BUILDERS[name](tuple(image_shape), num_classes)
    if spec.is_spec(name):
        model = spec.parse(name)(num_classes=num_classes)
        if model.dims == 2 and not model.embedding:
            return pattern_net(model, tuple(image_shape), num_classes)
    raise UserError(f"no PyTorch mirror of '{name}': choose one of {', '.join(BUILDERS)}, or a 2-D spec")


def _torch_value(name: str, value: np.ndarray) -> np.ndarray:
    """A Flax leaf in PyTorch's layout: conv kernels HWIO -> OIHW, dense kernels [in, out] -> [out, in]."""
    if name == "kernel":
        return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    return value


_NAMES = {("params", "kernel"): "weight", ("params", "bias"): "bias", ("params", "scale"): "weight",
          ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}


def load_flax(net: nn.Module, variables: dict) -> nn.Module:
    """Copies a Flax model's `params` and `batch_stats` into its PyTorch mirror `net`, every tensor of it.

    Raises ValueError if a variable has no tensor of its name and shape in
    `net`, or a tensor of `net` is left without a value: so a copy that
    succeeds proves the two hold the same tensors.
    """
    from flax import traverse_util

    state = net.state_dict()
    filled = set()
    for collection in ("params", "batch_stats"):
        for path, value in traverse_util.flatten_dict(variables.get(collection, {})).items():
            key = ".".join((*path[:-1], _NAMES[collection, path[-1]]))
            value = torch.from_numpy(np.array(_torch_value(path[-1], np.asarray(value))))
            if key not in state or state[key].shape != value.shape:
                raise ValueError(f"Flax's {collection} {'/'.join(path)} {tuple(value.shape)} has no PyTorch tensor "
                                 f"{key} of that shape")
            state[key] = value
            filled.add(key)
    missing = [key for key in state if key not in filled and not key.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"PyTorch tensors without a Flax value: {', '.join(missing)}")
    net.load_state_dict(state)
    return net
