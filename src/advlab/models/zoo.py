"""The model zoo: small classifiers from the adversarial-robustness literature.

Every zoo model is a plain :class:`torch.nn.Sequential` of standard layers (``Normalize``,
``Conv2d``, ``ReLU``, ``MaxPool2d``, ``Flatten``, ``Linear``), so that certification code can walk
it layer by layer. Its first layer is always :class:`Normalize`: inputs are in ``[0, 1]`` and the
per-channel standardization lives inside the model, so ``eps`` is always measured in input units.
Models return logits.

Each factory is registered in :data:`advlab.registry.MODELS` and has the signature::

    factory(*, num_classes=10, in_shape=(C, H, W), mean=None, std=None, **arch_kwargs)
        -> nn.Sequential

Build one by name with :func:`build_model` (which rejects unknown keyword arguments and can seed
the weight initialization without touching the global RNG).
"""

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from advlab.errors import ConfigError
from advlab.registry import MODELS

ModelFactory = Callable[..., nn.Sequential]

#: Per-channel mean and standard deviation of the CIFAR-10 training set.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class Normalize(nn.Module):
    """Per-channel standardization ``(x - mean) / std``, the first layer of every zoo model.

    ``mean`` and ``std`` are stored as buffers of shape ``(C, 1, 1)``, so they are saved with the
    weights and move with the model between devices. The default (mean 0, std 1) is the identity.

    Args:
        mean: one value per channel (or a single value for all channels).
        std: one positive value per channel (or a single value).

    Shape:
        x: ``(B, C, H, W)`` -> ``(B, C, H, W)``.
    """

    # real (not string) annotations, so that torch.jit.script can compile the layer
    mean: Tensor
    std: Tensor

    def __init__(self, mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,)) -> None:
        super().__init__()
        m, s = [float(v) for v in mean], [float(v) for v in std]
        if not m or not s:
            raise ConfigError("Normalize needs at least one mean and one std value")
        if not all(math.isfinite(v) for v in m) or not all(0 < v < math.inf for v in s):
            raise ConfigError(f"Normalize needs finite means and finite std > 0, got std={s}")
        self.register_buffer("mean", torch.tensor(m, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(s, dtype=torch.float32).view(-1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class Residual(nn.Module):
    """A residual block ``x + body(x)``: the one non-sequential shape certification understands.

    Args:
        *body: the layers of the branch, applied in order; the output shape must equal the input
            shape.

    Shape:
        x: ``(B, *)`` -> ``(B, *)``.
    """

    def __init__(self, *body: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(*body)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class Arctan(nn.Module):
    """Elementwise ``arctan``, one of CNN-Cert's general activations (PyTorch has no layer)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.atan(x)


#: activation layers by name, for the factories that take ``activation=``
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "arctan": Arctan,
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# argument checks shared by the factories


def _check_shape(in_shape: Sequence[int], arch: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in in_shape)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{arch}: in_shape must be (C, H, W) integers, got {in_shape!r}"
        ) from None
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(
            f"{arch}: in_shape must be three positive integers (C, H, W), got {tuple(in_shape)}"
        )
    return shape[0], shape[1], shape[2]


def _stats(
    values: Sequence[float] | None, default: float, channels: int, what: str, arch: str
) -> tuple[float, ...]:
    if values is None:
        return (default,) * channels
    if isinstance(values, int | float):
        values = [values]
    out = tuple(float(v) for v in values)
    if len(out) not in (1, channels):
        raise ConfigError(
            f"{arch}: {what} needs 1 or {channels} values (one per input channel), got {len(out)}"
        )
    return out * channels if len(out) == 1 else out


def _head(
    arch: str, num_classes: int, in_shape: Sequence[int], mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> tuple[tuple[int, int, int], Normalize]:  # fmt: skip
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"{arch}: num_classes must be an integer >= 2, got {num_classes!r}")
    shape = _check_shape(in_shape, arch)
    c = shape[0]
    norm = Normalize(_stats(mean, 0.0, c, "mean", arch), _stats(std, 1.0, c, "std", arch))
    return shape, norm


def _conv_out(n: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    return (n + 2 * padding - kernel) // stride + 1


def _too_small(arch: str, shape: tuple[int, int, int], need: str) -> ConfigError:
    return ConfigError(
        f"{arch}: input of size {shape[1]}x{shape[2]} is too small for this architecture "
        f"(needs {need}); use a larger in_shape or another model"
    )


# ---------------------------------------------------------------------------------------------
# the models


@MODELS.register("mlp", description="Fully connected net, Flatten-100-100-classes with ReLU.")
def mlp(
    *,
    num_classes: int = 10,
    in_shape: Sequence[int] = (1, 28, 28),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    hidden: Sequence[int] = (100, 100),
) -> nn.Sequential:
    """Multi-layer perceptron: ``Flatten, Linear(D, h1), ReLU, ..., Linear(h_k, classes)``.

    Args:
        num_classes: number of output logits.
        in_shape: ``(C, H, W)`` of one input; ``D = C * H * W``.
        mean, std: per-channel normalization (default: identity).
        hidden: widths of the hidden layers (default 100, 100: the 784-100-100-10 MNIST MLP).
    """
    shape, norm = _head("mlp", num_classes, in_shape, mean, std)
    widths = [int(h) for h in hidden]
    if any(h < 1 for h in widths):
        raise ConfigError(f"mlp: hidden widths must be >= 1, got {list(hidden)}")
    layers: list[nn.Module] = [norm, nn.Flatten()]
    prev = math.prod(shape)
    for h in widths:
        layers += [nn.Linear(prev, h), nn.ReLU()]
        prev = h
    layers.append(nn.Linear(prev, num_classes))
    return nn.Sequential(*layers)


@MODELS.register(
    "papernot-mnist",
    description="Papernot/Carlini-Wagner MNIST CNN: conv 32-32-64-64 (3x3), FC 200-200.",
)
def papernot_mnist(
    *,
    num_classes: int = 10,
    in_shape: Sequence[int] = (1, 28, 28),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Sequential:
    """The MNIST network of defensive distillation and of Carlini & Wagner's attacks.

    ``conv3x3(32), ReLU, conv3x3(32), ReLU, maxpool2, conv3x3(64), ReLU, conv3x3(64), ReLU,
    maxpool2, Flatten, FC 200, ReLU, FC 200, ReLU, FC classes`` with valid (no) padding. The
    original trains with dropout 0.5 before the last FC layers; this plain stack leaves it out.

    Reference:
        Papernot et al. 2016, "Distillation as a Defense to Adversarial Perturbations against
        Deep Neural Networks"; Carlini & Wagner 2017, "Towards Evaluating the Robustness of
        Neural Networks" (``train_models.py``).
    """
    shape, norm = _head("papernot-mnist", num_classes, in_shape, mean, std)
    h, w = shape[1], shape[2]
    for _ in range(2):
        h, w = (_conv_out(_conv_out(h, 3), 3)) // 2, (_conv_out(_conv_out(w, 3), 3)) // 2
    if h < 1 or w < 1:
        raise _too_small("papernot-mnist", shape, "at least 16x16")
    return nn.Sequential(
        norm,
        nn.Conv2d(shape[0], 32, 3), nn.ReLU(),
        nn.Conv2d(32, 32, 3), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(),
        nn.Conv2d(64, 64, 3), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * h * w, 200), nn.ReLU(),
        nn.Linear(200, 200), nn.ReLU(),
        nn.Linear(200, num_classes),
    )  # fmt: skip


@MODELS.register(
    "madry-mnist",
    description="Madry et al. MNIST CNN: conv 32-64 (5x5, pool), FC 1024; `width` scales it.",
)
def madry_mnist(
    *,
    num_classes: int = 10,
    in_shape: Sequence[int] = (1, 28, 28),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    width: float = 1.0,
) -> nn.Sequential:
    """The MNIST network of Madry et al.'s PGD adversarial training.

    ``conv5x5(32w, pad 2), ReLU, maxpool2, conv5x5(64w, pad 2), ReLU, maxpool2, Flatten,
    FC 1024w, ReLU, FC classes``, where ``w = width`` scales the capacity (the paper studies
    capacity with widths 1, 2, 4, 8, 16 of a smaller base).

    Reference:
        Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks".
    """
    shape, norm = _head("madry-mnist", num_classes, in_shape, mean, std)
    if isinstance(width, bool) or not isinstance(width, int | float) or not width > 0:
        raise ConfigError(f"madry-mnist: width must be a number > 0, got {width!r}")
    c1, c2, fc = (max(1, round(n * width)) for n in (32, 64, 1024))
    h, w = shape[1] // 4, shape[2] // 4
    if h < 1 or w < 1:
        raise _too_small("madry-mnist", shape, "at least 4x4")
    return nn.Sequential(
        norm,
        nn.Conv2d(shape[0], c1, 5, padding=2), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * h * w, fc), nn.ReLU(),
        nn.Linear(fc, num_classes),
    )  # fmt: skip


@MODELS.register(
    "wong-mnist",
    description="Wong & Kolter provable-defense CNN: conv 16-32 (4x4, stride 2), FC 100.",
)
def wong_mnist(
    *,
    num_classes: int = 10,
    in_shape: Sequence[int] = (1, 28, 28),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Sequential:
    """The small MNIST network of Wong & Kolter's convex outer adversarial polytope.

    ``conv4x4(16, stride 2, pad 1), ReLU, conv4x4(32, stride 2, pad 1), ReLU, Flatten, FC 100,
    ReLU, FC classes``.

    Reference:
        Wong & Kolter 2018, "Provable Defenses against Adversarial Examples via the Convex Outer
        Adversarial Polytope".
    """
    shape, norm = _head("wong-mnist", num_classes, in_shape, mean, std)
    h = _conv_out(_conv_out(shape[1], 4, 2, 1), 4, 2, 1)
    w = _conv_out(_conv_out(shape[2], 4, 2, 1), 4, 2, 1)
    if h < 1 or w < 1:
        raise _too_small("wong-mnist", shape, "at least 4x4")
    return nn.Sequential(
        norm,
        nn.Conv2d(shape[0], 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * h * w, 100), nn.ReLU(),
        nn.Linear(100, num_classes),
    )  # fmt: skip


@MODELS.register(
    "cifar-cnn",
    description="Small CIFAR-10 CNN: conv 32-32-64-64 (3x3, same), FC 256; CIFAR normalization.",
)
def cifar_cnn(
    *,
    num_classes: int = 10,
    in_shape: Sequence[int] = (3, 32, 32),
    mean: Sequence[float] | None = CIFAR10_MEAN,
    std: Sequence[float] | None = CIFAR10_STD,
) -> nn.Sequential:
    """A small VGG-style CNN for ``(3, 32, 32)`` inputs.

    ``conv3x3(32), ReLU, conv3x3(32), ReLU, maxpool2, conv3x3(64), ReLU, conv3x3(64), ReLU,
    maxpool2, Flatten, FC 256, ReLU, FC classes`` with same (1-pixel) padding. Normalizes with
    the CIFAR-10 channel statistics by default (pass ``mean=None, std=None`` for the identity).
    """
    shape, norm = _head("cifar-cnn", num_classes, in_shape, mean, std)
    h, w = shape[1] // 4, shape[2] // 4
    if h < 1 or w < 1:
        raise _too_small("cifar-cnn", shape, "at least 4x4")
    return nn.Sequential(
        norm,
        nn.Conv2d(shape[0], 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * h * w, 256), nn.ReLU(),
        nn.Linear(256, num_classes),
    )  # fmt: skip


@MODELS.register(
    "cnn-cert-mnist",
    description="CNN-Cert's MNIST CNN: `layers`-1 conv layers of `filters` 3x3 filters, then FC.",
)
def cnn_cert_mnist(
    *,
    num_classes: int = 10,
    in_shape: Sequence[int] = (1, 28, 28),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    layers: int = 4,
    filters: int = 5,
    activation: str = "relu",
) -> nn.Sequential:
    """The pure convolutional networks of CNN-Cert's MNIST tables.

    ``layers - 1`` times ``conv3x3(filters), activation`` with valid (no) padding and stride 1,
    then ``Flatten, FC classes``. The default, 4 layers of 5 filters, has 8,680 hidden neurons on
    MNIST, as in the paper.

    Args:
        layers: number of layers, the last being the fully connected one (>= 2).
        filters: filters per convolution.
        activation: ``relu``, ``sigmoid``, ``tanh`` or ``arctan``.

    Reference:
        Boopathy et al. 2019, "CNN-Cert: An Efficient Framework for Certifying Robustness of
        Convolutional Neural Networks", Tables 3-6.
    """
    shape, norm = _head("cnn-cert-mnist", num_classes, in_shape, mean, std)
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 2:
        raise ConfigError(f"cnn-cert-mnist: layers must be an integer >= 2, got {layers!r}")
    if isinstance(filters, bool) or not isinstance(filters, int) or filters < 1:
        raise ConfigError(f"cnn-cert-mnist: filters must be an integer >= 1, got {filters!r}")
    if activation not in ACTIVATIONS:
        raise ConfigError(
            f"cnn-cert-mnist: unknown activation {activation!r}; use one of "
            f"{', '.join(ACTIVATIONS)}"
        )
    h, w = shape[1] - 2 * (layers - 1), shape[2] - 2 * (layers - 1)
    if h < 1 or w < 1:
        raise _too_small("cnn-cert-mnist", shape, f"at least {2 * layers - 1}x{2 * layers - 1}")
    body: list[nn.Module] = [norm]
    channels = shape[0]
    for _ in range(layers - 1):
        body += [nn.Conv2d(channels, filters, 3), ACTIVATIONS[activation]()]
        channels = filters
    body += [nn.Flatten(), nn.Linear(filters * h * w, num_classes)]
    return nn.Sequential(*body)


# ---------------------------------------------------------------------------------------------
# building by name


def arch_kwargs(name: str, **kwargs: Any) -> dict[str, Any]:
    """The full keyword arguments a zoo factory would be called with: ``kwargs`` plus defaults.

    Unknown keywords raise :class:`~advlab.errors.ConfigError` naming the accepted ones. Tuples
    are returned as lists, so the result round-trips through JSON unchanged.
    """
    factory: ModelFactory = MODELS.get(name)
    params = inspect.signature(factory).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ConfigError(
            f"model {name!r} has no argument(s) {', '.join(unknown)}; "
            f"it accepts {', '.join(params)}"
        )
    full = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    full.update(kwargs)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in full.items()}


def build_model(name: str, *, seed: int | None = None, **kwargs: Any) -> nn.Sequential:
    """Build the zoo model registered under ``name``.

    Args:
        name: a name from :data:`advlab.registry.MODELS` (``advlab list models``).
        seed: if given, the weight initialization is drawn from a stream seeded with it, inside
            :func:`torch.random.fork_rng`, so the caller's global RNG state is left unchanged and
            the same seed gives the same initial weights. Without it, layers initialize from the
            global RNG as usual.
        **kwargs: the factory's arguments (``num_classes``, ``in_shape``, ``mean``, ``std`` and
            architecture-specific ones such as ``width``); unknown ones raise ConfigError.

    Returns:
        The model, in training mode as freshly built modules are (call ``.eval()`` to attack it).

    Example:
        >>> model = build_model("madry-mnist", width=2.0, seed=0)
    """
    arch_kwargs(name, **kwargs)  # rejects unknown keyword arguments with a clear message
    factory: ModelFactory = MODELS.get(name)
    if seed is None:
        return factory(**kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(int(seed))
        return factory(**kwargs)
