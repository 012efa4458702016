"""The small convolutional autoencoder of AutoZOOM (its "AE" dimension reduction).

AutoZOOM (Tu et al. 2019) attacks in a reduced space and maps a reduced perturbation back to the
image with the decoder half of an autoencoder trained on *unlabeled* images of the task (the
attacker's own data: no label and no query of the attacked model). :class:`ConvAutoencoder` is
that network:

* encoder: ``conv3x3(hidden), ReLU`` then, ``downsample`` times, ``conv3x3(hidden, stride 2),
  ReLU``, then ``conv3x3(latent_channels)``: an image ``(C, H, W)`` becomes a code of shape
  ``(latent_channels, H / 2^downsample, W / 2^downsample)`` (MNIST with the defaults:
  ``(1, 14, 14)``, a quarter of the pixels, as in the paper);
* decoder: ``conv3x3(hidden), ReLU`` then, ``downsample`` times, ``2x bilinear upsampling,
  conv3x3(hidden), ReLU``, then ``conv3x3(C)``.

Images are centred (``x - 0.5``) before the encoder and the decoder's output is in the same
centred units, so a decoded perturbation is measured in input units.

**Saving.** A codec is saved with :func:`advlab.models.save_model` like any model (safetensors
weights, JSON metadata with its SHA-256). It is not a classifier, so it is not a zoo
architecture (:data:`advlab.registry.MODELS` holds classifiers only, and every test of the zoo
treats its entries as such); its metadata records its arguments under ``extra["codec"]`` and
:func:`load_codec` rebuilds it, through :func:`advlab.models.load_model` with the factory
``advlab.models.codec:FACTORIES.<name>`` that names those arguments. That factory also works
directly: ``load_model(path, factory=codec_factory(**args))``.

Reference:
    Tu et al. 2019, "AutoZOOM: Autoencoder-based Zeroth Order Optimization Method for Attacking
    Black-box Neural Networks", AAAI, Section 3 (dimension reduction by a decoder).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advlab.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

#: Pixel offset removed before the encoder (images in ``[0, 1]`` become ``[-0.5, 0.5]``).
CENTER = 0.5


class ConvAutoencoder(nn.Module):
    """AutoZOOM's convolutional autoencoder (module docstring).

    Args:
        in_shape: ``(C, H, W)`` of one image; ``H`` and ``W`` must be divisible by
            ``2 ** downsample``.
        latent_channels: channels of the code.
        downsample: number of stride-2 stages (1: 28x28 -> 14x14, 2: -> 7x7).
        hidden: channels of the hidden convolutions.

    Shape:
        forward: ``(B, C, H, W)`` -> ``(B, C, H, W)`` reconstructions;
        encode: ``(B, C, H, W)`` -> ``(B, *latent_shape)``;
        decoder: ``(B, *latent_shape)`` -> ``(B, C, H, W)`` (centred units).
    """

    def __init__(
        self,
        in_shape: Sequence[int] = (1, 28, 28),
        latent_channels: int = 1,
        downsample: int = 1,
        hidden: int = 16,
    ) -> None:
        super().__init__()
        shape = tuple(int(v) for v in in_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ConfigError(
                f"codec: in_shape must be (C, H, W) positive integers, got {in_shape!r}"
            )
        for name, v, lo in (("latent_channels", latent_channels, 1), ("downsample", downsample, 0),
                            ("hidden", hidden, 1)):  # fmt: skip
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"codec: {name} must be an integer >= {lo}, got {v!r}")
        f = 2**downsample
        if shape[1] % f or shape[2] % f:
            raise ConfigError(
                f"codec: images of {shape[1]}x{shape[2]} cannot be halved {downsample} times; "
                "use a smaller downsample"
            )
        c = shape[0]
        self.in_shape = shape
        self.latent_channels, self.downsample, self.hidden = latent_channels, downsample, hidden
        self.latent_shape = (latent_channels, shape[1] // f, shape[2] // f)
        enc: list[nn.Module] = [nn.Conv2d(c, hidden, 3, padding=1), nn.ReLU()]
        for _ in range(downsample):
            enc += [nn.Conv2d(hidden, hidden, 3, stride=2, padding=1), nn.ReLU()]
        enc.append(nn.Conv2d(hidden, latent_channels, 3, padding=1))
        dec: list[nn.Module] = [nn.Conv2d(latent_channels, hidden, 3, padding=1), nn.ReLU()]
        for _ in range(downsample):
            dec += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                    nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU()]  # fmt: skip
        dec.append(nn.Conv2d(hidden, c, 3, padding=1))
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)

    @property
    def config(self) -> dict[str, Any]:
        """The constructor's arguments (JSON-serializable)."""
        return {"in_shape": list(self.in_shape), "latent_channels": self.latent_channels,
                "downsample": self.downsample, "hidden": self.hidden}  # fmt: skip

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x - CENTER)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encode(x)) + CENTER


def codec_name(in_shape: Sequence[int], latent_channels: int, downsample: int, hidden: int) -> str:
    """The attribute of :data:`FACTORIES` that builds a codec with these arguments."""
    c, h, w = (int(v) for v in in_shape)
    return f"c{c}h{h}w{w}_l{latent_channels}_d{downsample}_k{hidden}"


_NAME = re.compile(r"c(\d+)h(\d+)w(\d+)_l(\d+)_d(\d+)_k(\d+)")


class _Factories:
    """``FACTORIES.<codec_name(...)>`` is a no-argument factory of that codec (for
    :func:`advlab.models.load_model`'s ``factory=``, which calls factories without arguments)."""

    def __getattr__(self, name: str) -> Callable[[], ConvAutoencoder]:
        m = _NAME.fullmatch(name)
        if m is None:
            raise AttributeError(name)
        c, h, w, lat, down, hid = (int(g) for g in m.groups())
        return lambda: ConvAutoencoder((c, h, w), lat, down, hid)


#: No-argument codec factories by :func:`codec_name`.
FACTORIES = _Factories()


def codec_factory(
    in_shape: Sequence[int], latent_channels: int, downsample: int, hidden: int
) -> str:
    """The ``factory=`` string of :func:`advlab.models.load_model` for such a codec."""
    return (
        f"advlab.models.codec:FACTORIES.{codec_name(in_shape, latent_channels, downsample, hidden)}"
    )


def train_codec(
    x: Tensor,
    *,
    latent_channels: int = 1,
    downsample: int = 1,
    hidden: int = 16,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[ConvAutoencoder, float]:
    """Train a :class:`ConvAutoencoder` on unlabeled images (mean squared reconstruction error,
    Adam).

    Args:
        x: ``(N, C, H, W)`` images in ``[0, 1]`` (labels are not used).
        latent_channels, downsample, hidden: the architecture (:class:`ConvAutoencoder`).
        epochs, batch_size, lr: Adam's schedule.
        seed: weight initialization and batch order (the global RNG is left alone).
        device: where to train (default: ``x``'s device); the model is returned on the CPU.
        progress: called after each epoch with ``{"event": "epoch", "epoch", "epochs",
            "loss"}``.

    Returns:
        ``(codec, loss)``: the trained codec in eval mode on the CPU, and the mean squared error
        of its last epoch.

    Reference:
        Tu et al. 2019, Section 3 (the autoencoder is trained on unlabeled data only).
    """
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point() or len(x) == 0:
        raise ConfigError("train_codec needs a non-empty (N, C, H, W) float tensor of images")
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {v!r}")
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr must be a finite number > 0, got {lr!r}")
    try:
        dev = torch.device(device) if device is not None else x.device
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for but no GPU is available; use cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ConvAutoencoder(tuple(x.shape[1:]), latent_channels, downsample, hidden)
    model.to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    n, last = len(x), math.nan
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(n, generator=g)
        total = 0.0
        for i in range(0, n, batch_size):
            xb = x[perm[i : i + batch_size]].to(dev, torch.float32)
            loss = F.mse_loss(model(xb), xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(xb)
        last = total / n
        log.info("codec epoch %d/%d: reconstruction MSE %.5f", epoch, epochs, last)
        if progress is not None:
            progress({"event": "epoch", "epoch": epoch, "epochs": epochs, "loss": last})
    return model.cpu().eval(), last


def save_codec(
    model: ConvAutoencoder, path: str | Path, *, dataset: str | None = None,
    loss: float | None = None, seed: int | None = None, recipe: dict[str, Any] | None = None,
) -> Path:  # fmt: skip
    """Save a codec with :func:`advlab.models.save_model` (arguments in ``extra["codec"]``).

    Returns:
        The path of the ``.safetensors`` file.
    """
    from advlab.models.io import save_model

    extra: dict[str, Any] = {"codec": model.config, "kind": "autoencoder"}
    if loss is not None:
        extra["reconstruction_mse"] = float(loss)
    return save_model(model, path, dataset=dataset, recipe=recipe, seed=seed, extra=extra)


def load_codec(path: str | Path, *, map_location: str | torch.device = "cpu") -> ConvAutoencoder:
    """Load a codec saved by :func:`save_codec` (or by ``advlab train-codec``).

    Raises:
        CheckpointError: a missing or corrupt file, or a model file that is not a codec.
    """
    from advlab.models.io import _paths, load_model

    weights, meta_path = _paths(path)
    if not weights.is_file():
        raise CheckpointError(
            f"codec file {weights} does not exist; train one with `advlab train-codec --out "
            f"{weights}`"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        cfg = meta["extra"]["codec"]
        spec = codec_factory(cfg["in_shape"], int(cfg["latent_channels"]), int(cfg["downsample"]),
                             int(cfg["hidden"]))  # fmt: skip
    except FileNotFoundError:
        raise CheckpointError(
            f"{meta_path} is missing: a codec needs its metadata file beside the weights; "
            "re-create it with `advlab train-codec`"
        ) from None
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(
            f"{weights} is not an advlab codec (its metadata has no extra.codec); train one "
            "with `advlab train-codec`"
        ) from None
    model, _ = load_model(weights, factory=spec, map_location=map_location)
    assert isinstance(model, ConvAutoencoder)
    return model
