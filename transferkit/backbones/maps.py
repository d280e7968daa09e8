"""Where a backbone's last spatial feature map is: the layer an explanation map is read from.

Every image backbone here is a timm or torchvision network (packaged weights, the hub, a checkpoint file or a
backbone folder all end in one), and the spectrogram CNN of audio runs one on a log-mel image. CNNs end in a map
``(B, C, h, w)`` that global pooling reduces to the features; vision transformers in a token sequence
``(B, prefix + h * w, C)``, whose patch tokens are the map. :func:`feature_map_layer` finds the layer that gives it
by running one small input, so it holds for any architecture of those libraries, not a list of names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import BackboneError


@dataclass
class FeatureMapLayer:
    """The module whose output (or, with ``use_input``, whose input) is the last feature map, how that tensor
    becomes ``(B, C, h, w)``, and the ``grid`` (h, w) it gives at the input size it was found for."""

    module: nn.Module
    name: str
    to_grid: Callable[[torch.Tensor], torch.Tensor]  # the module's output (or anything shaped like it) -> (B, C, h, w)
    grid: tuple[int, int]
    # vision transformers pooling their class token: the last block's output patch tokens never reach the head (their
    # gradient is 0), its input tokens do, through that block's attention
    use_input: bool = False


def feature_map_layer(body: nn.Module, input_size: tuple[int, int]) -> FeatureMapLayer:
    """The last spatial feature map of an image network ``body`` (a timm or torchvision model without its
    classifier) for inputs of ``input_size`` (height, width).

    Vision transformers (timm: ``patch_embed``, ``num_prefix_tokens`` and ``blocks``; torchvision: ``encoder.layers``
    and ``patch_size``) give the tokens entering their last block, the patch tokens laid back on the patch grid.
    Other networks give the module that, in one forward pass on a small input, produced the last 4-D output with
    more than one position (for a timm CNN the activation after its last convolution; for a torchvision ResNet
    ``layer4``); an output whose last axis holds the features (timm's Swin, channels last) is turned around.

    Raises:
        BackboneError: the network produces no spatial map (e.g. an MLP on flat inputs).
    """
    if hasattr(body, "patch_embed") and hasattr(body, "num_prefix_tokens") and hasattr(body, "blocks"):
        ph, pw = body.patch_embed.patch_size
        return _token_grid(body.blocks[-1], f"blocks.{len(body.blocks) - 1}", int(body.num_prefix_tokens),
                           (input_size[0] // ph, input_size[1] // pw))
    encoder = getattr(body, "encoder", None)
    if hasattr(body, "class_token") and hasattr(body, "patch_size") and hasattr(encoder, "layers"):  # torchvision
        p = int(body.patch_size)
        return _token_grid(encoder.layers[-1], f"encoder.layers.{len(encoder.layers) - 1}", 1,
                           (input_size[0] // p, input_size[1] // p))
    seen: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    names = {id(m): n for n, m in body.named_modules()}

    def record(module: nn.Module, _inputs: tuple, output: object) -> None:
        if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[-1] * output.shape[-2] > 1:
            seen.append((names.get(id(module), ""), module, tuple(output.shape)))

    hooks = [m.register_forward_hook(record) for m in body.modules() if m is not body]
    was_training = body.training
    try:
        body.eval()
        with torch.no_grad():
            body(torch.zeros(1, 3, *input_size))
    finally:
        body.train(was_training)
        for h in hooks:
            h.remove()
    if not seen:
        raise BackboneError(f"{type(body).__name__} gives no spatial feature map to explain: explanation maps need "
                            "a convolutional network or a vision transformer.")
    name, module, shape = seen[-1]
    features = getattr(body, "num_features", None)
    if features is not None and shape[-1] == features and shape[1] != features:  # (B, h, w, C)
        return FeatureMapLayer(module, name, lambda x: x.permute(0, 3, 1, 2), (shape[1], shape[2]))
    return FeatureMapLayer(module, name, lambda x: x, (shape[2], shape[3]))


def _token_grid(block: nn.Module, name: str, prefix: int, grid: tuple[int, int]) -> FeatureMapLayer:
    h, w = grid

    def to_grid(tokens: torch.Tensor) -> torch.Tensor:
        spatial = tokens[:, prefix:, :]
        if spatial.shape[1] != h * w:
            raise BackboneError(f"{name}: {spatial.shape[1]} patch tokens do not fill a {h}x{w} grid.")
        return spatial.reshape(tokens.shape[0], h, w, tokens.shape[-1]).permute(0, 3, 1, 2)

    return FeatureMapLayer(block, name, to_grid, grid, use_input=True)
