"""Segmentation architectures behind one wrapper, and weights-only checkpoint I/O.

`build_model` gives every architecture the same interface: a `SegmentationNet`
mapping (B, 3, H, W) normalised images to (B, K, H, W) logits at the input
resolution. Initial weights come from, in order: an explicit checkpoint, the
torchvision ImageNet backbone file when it is already in the local torch hub
cache, or random init. Nothing is ever downloaded.

Checkpoints are plain state dicts written with `save_weights` and read back with
`load_weights`, which uses ``weights_only`` and so refuses pickled code.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import (
    MobileNet_V3_Large_Weights,
    ResNet18_Weights,
    WeightsEnum,
    resnet18,
)
from torchvision.models.segmentation import (
    deeplabv3_mobilenet_v3_large,
    lraspp_mobilenet_v3_large,
)

from edgeloop.checks import check_int

log = logging.getLogger(__name__)

ARCHITECTURES = (
    "lraspp_mobilenet_v3_large",
    "deeplabv3_mobilenet_v3_large",
    "unet_resnet18",
)
# Under this many parameters training stops early; above it, ExponentialLR.
SMALL_MODEL_PARAMS = 5_000_000
INPUT_NORMS = ("dataset", "instance")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The ImageNet classification weights each architecture's backbone starts from.
_BACKBONE_WEIGHTS: dict[str, WeightsEnum] = {
    "lraspp_mobilenet_v3_large": MobileNet_V3_Large_Weights.IMAGENET1K_V1,
    "deeplabv3_mobilenet_v3_large": MobileNet_V3_Large_Weights.IMAGENET1K_V1,
    "unet_resnet18": ResNet18_Weights.IMAGENET1K_V1,
}
_UNET_DECODER_CHANNELS = (256, 128, 64, 32, 16)


def _conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class _DecoderBlock(nn.Module):
    """Upsample to the skip's size, concatenate it, then two conv-bn-relu."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(in_ch + skip_ch, out_ch)
        self.conv2 = _conv_bn_relu(out_ch, out_ch)

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor | None, size: tuple[int, int]
    ) -> torch.Tensor:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)  # (B, C_in + C_skip, h, w)
        return self.conv2(self.conv1(x))


class UNetResNet18(nn.Module):
    """A U-Net with a torchvision resnet18 encoder.

    The encoder is resnet18 without its classifier (``fc`` is an identity), so an
    ImageNet resnet18 state dict minus ``fc.*`` loads into it as is. The decoder
    upsamples to each skip's size (any input size works, not only multiples of 32),
    concatenates it and applies two conv-bn-relu blocks.

    Args:
        num_classes: Number of output channels K.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.encoder = resnet18(weights=None)
        self.encoder.fc = nn.Identity()
        # Skips at strides 16, 8, 4, 2 and none at full resolution.
        skips = (256, 128, 64, 64, 0)
        blocks, in_ch = [], 512
        for skip_ch, out_ch in zip(skips, _UNET_DECODER_CHANNELS, strict=True):
            blocks.append(_DecoderBlock(in_ch, skip_ch, out_ch))
            in_ch = out_ch
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(in_ch, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        enc = self.encoder
        s2 = enc.relu(enc.bn1(enc.conv1(x)))  # (B, 64, H/2, W/2)
        s4 = enc.layer1(enc.maxpool(s2))  # (B, 64, H/4, W/4)
        s8 = enc.layer2(s4)  # (B, 128, H/8, W/8)
        s16 = enc.layer3(s8)  # (B, 256, H/16, W/16)
        y = enc.layer4(s16)  # (B, 512, H/32, W/32)
        for block, skip in zip(self.decoder, (s16, s8, s4, s2, None), strict=True):
            target = skip.shape[-2:] if skip is not None else size
            y = block(y, skip, tuple(target))
        return self.head(y)  # (B, K, H, W) logits


class SegmentationNet(nn.Module):
    """Uniform wrapper: (B, 3, H, W) normalised float -> (B, K, H, W) logits.

    Attributes:
        arch: One of `ARCHITECTURES`.
        num_classes: K.
        net: The wrapped network.
    """

    def __init__(
        self,
        arch: str,
        num_classes: int,
        net: nn.Module,
        *,
        input_norm: str = "dataset",
    ) -> None:
        super().__init__()
        if input_norm not in INPUT_NORMS:
            raise ValueError(
                f"input_norm must be one of {INPUT_NORMS}, got {input_norm!r}"
            )
        self.arch = arch
        self.num_classes = num_classes
        self.net = net
        self.input_norm = input_norm

    @property
    def backbone(self) -> nn.Module:
        """The module ImageNet backbone weights load into."""
        if self.arch == "unet_resnet18":
            return self.net.encoder
        return self.net.backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_norm == "instance":
            # Per-image, per-channel standardisation: a dark (night) or washed
            # out (haze, glare) image reaches the network with the same
            # statistics as a day image. No parameters: weights are unchanged.
            mean = x.mean(dim=(2, 3), keepdim=True)
            std = x.std(dim=(2, 3), keepdim=True)
            x = (x - mean) / (std + 1e-2)
        out = self.net(x)
        if isinstance(out, Mapping):  # torchvision segmentation models
            out = out["out"]
        if out.shape[-2:] != x.shape[-2:]:
            out = F.interpolate(
                out, size=x.shape[-2:], mode="bilinear", align_corners=False
            )
        return out  # (B, K, H, W) logits

    def extra_repr(self) -> str:
        return (
            f"arch={self.arch!r}, num_classes={self.num_classes}, "
            f"input_norm={self.input_norm!r}"
        )


def _check_arch(arch: str) -> None:
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"arch must be one of {', '.join(ARCHITECTURES)}; got {arch!r}"
        )


def imagenet_backbone_path(arch: str) -> str:
    """Where torchvision caches the ImageNet backbone file of `arch`.

    Raises:
        ValueError: if `arch` is unknown.
    """
    _check_arch(arch)
    url = _BACKBONE_WEIGHTS[arch].url
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def _construct(
    arch: str, num_classes: int, imagenet: bool, input_norm: str = "dataset"
) -> SegmentationNet:
    # weights_backbone is only passed when its file is in the hub cache, from
    # which torchvision loads it without touching the network.
    weights = _BACKBONE_WEIGHTS[arch] if imagenet else None
    if arch == "lraspp_mobilenet_v3_large":
        net = lraspp_mobilenet_v3_large(
            weights=None, weights_backbone=weights, num_classes=num_classes
        )
    elif arch == "deeplabv3_mobilenet_v3_large":
        net = deeplabv3_mobilenet_v3_large(
            weights=None,
            weights_backbone=weights,
            num_classes=num_classes,
            aux_loss=False,
        )
    else:
        net = UNetResNet18(num_classes)
    # torchvision's MobileNetV3 uses batch-norm momentum 0.01, tuned for
    # ImageNet's many steps per epoch. With a few hundred images the running
    # statistics barely leave their init and eval-mode predictions collapse to
    # one class; PyTorch's default 0.1 tracks the data within an epoch.
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.1
    model = SegmentationNet(arch, num_classes, net, input_norm=input_norm)
    if imagenet and arch == "unet_resnet18":
        state = load_weights(imagenet_backbone_path(arch))
        _load_backbone(model, state, "ImageNet resnet18 file")
    return model


def _backbone_state(
    arch: str, state: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Maps a backbone state dict to the keys of `SegmentationNet.backbone`.

    Accepts the ImageNet classification layout (``features.*`` for MobileNetV3,
    resnet keys with ``fc.*`` for resnet18) and the backbone's own layout, with or
    without a ``net.backbone.`` / ``backbone.`` / ``net.encoder.`` / ``encoder.``
    prefix. Classifier keys are dropped.
    """
    prefixes = ("net.backbone.", "backbone.", "net.encoder.", "encoder.")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        if arch == "unet_resnet18":
            if key.startswith("fc."):
                continue
        else:
            if key.startswith("classifier."):
                continue
            key = key.removeprefix("features.")
        out[key] = value
    return out


def _load_backbone(
    model: SegmentationNet, state: Mapping[str, torch.Tensor], what: str
) -> None:
    backbone = model.backbone
    mapped = _backbone_state(model.arch, state)
    # torchvision's IntermediateLayerGetter keeps only the layers it needs, so
    # ignore extra trailing feature layers but require every backbone key.
    expected = backbone.state_dict().keys()
    missing = sorted(expected - mapped.keys())
    if missing:
        raise ValueError(
            f"{what} is neither a {model.arch} state dict nor a backbone state dict "
            f"(missing backbone keys, e.g. {missing[:3]})"
        )
    try:
        backbone.load_state_dict({k: mapped[k] for k in expected}, strict=True)
    except RuntimeError as err:  # right keys, wrong shapes
        raise ValueError(
            f"{what} does not fit the {model.arch} backbone: {err}"
        ) from err


def build_model(
    arch: str,
    num_classes: int,
    *,
    pretrained: bool = True,
    weights_path: str | os.PathLike[str] | None = None,
    input_norm: str = "dataset",
) -> tuple[SegmentationNet, str]:
    """Builds `arch` for `num_classes` and says where its initial weights came from.

    Initial weights, in order of precedence:

    1. `weights_path`: a state dict of the whole `SegmentationNet` or of its
       backbone (ImageNet classification layout accepted); source
       ``"checkpoint:<path>"``.
    2. With `pretrained`, the torchvision ImageNet backbone file if it is already
       in ``<torch hub dir>/checkpoints``; source ``"imagenet-backbone:<path>"``.
    3. Random init; source ``"random"``.

    Nothing is downloaded. One INFO line logs which was used.

    Args:
        arch: One of `ARCHITECTURES`.
        num_classes: Number of classes K (>= 1).
        pretrained: Use local ImageNet backbone weights when present.
        weights_path: A checkpoint to start from.
        input_norm: ``dataset`` (inputs as normalised by the caller) or
            ``instance`` (also standardised per image inside the model).

    Returns:
        The model (in train mode) and its weights source.

    Raises:
        ValueError: if `arch` is unknown, `num_classes` < 1, `weights_path` does
            not exist or does not fit the model.
    """
    _check_arch(arch)
    num_classes = check_int(num_classes, "num_classes", minimum=1)

    if weights_path is not None:
        path = os.fspath(weights_path)
        if not os.path.isfile(path):
            raise ValueError(f"weights_path {path!r} does not exist")
        state = load_weights(path)
        model = _construct(arch, num_classes, imagenet=False, input_norm=input_norm)
        if state.keys() == model.state_dict().keys():
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as err:  # same keys, other shapes (e.g. K)
                raise ValueError(
                    f"weights_path {path!r} does not fit {arch} with "
                    f"num_classes={num_classes}: {err}"
                ) from err
            what = "full model"
        else:
            _load_backbone(model, state, f"weights_path {path!r}")
            what = "backbone"
        log.info("%s: %s weights from checkpoint %s", arch, what, path)
        return model, f"checkpoint:{path}"

    backbone_file = imagenet_backbone_path(arch)
    folder, name = os.path.split(backbone_file)
    if pretrained and os.path.isfile(backbone_file):
        model = _construct(arch, num_classes, imagenet=True, input_norm=input_norm)
        log.info("%s: ImageNet backbone weights from %s", arch, backbone_file)
        return model, f"imagenet-backbone:{backbone_file}"

    model = _construct(arch, num_classes, imagenet=False, input_norm=input_norm)
    if pretrained:
        log.info("%s: no ImageNet weights in %s (%s); random init", arch, folder, name)
    else:
        log.info("%s: pretrained=False; random init", arch)
    return model, "random"


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not), shared ones counted once."""
    return sum(p.numel() for p in model.parameters())


def _tensor_bytes(t: torch.Tensor) -> bytes:
    # A uint8 view works for every dtype (bfloat16 has no numpy equivalent).
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def _plain_state(
    model_or_state: nn.Module | Mapping[str, torch.Tensor], what: str
) -> dict[str, torch.Tensor]:
    state = (
        model_or_state.state_dict()
        if isinstance(model_or_state, nn.Module)
        else model_or_state
    )
    if not isinstance(state, Mapping):
        raise ValueError(f"{what} must be a module or a mapping, got {type(state)}")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ValueError(
                f"{what} must map str to tensors; {key!r} is {type(value).__name__}"
            )
        out[key] = value
    return out


def weights_hash(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A deterministic sha256 of a state dict.

    Covers the sorted keys and, for each, its dtype, shape and raw bytes (CPU,
    contiguous), so equal weights hash equally wherever they live.

    Raises:
        ValueError: if `state_dict` holds anything but tensors.
    """
    state = _plain_state(state_dict, "state_dict")
    digest = hashlib.sha256()
    for key in sorted(state):
        t = state[key]
        digest.update(key.encode())
        digest.update(f"|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(_tensor_bytes(t))
    return digest.hexdigest()


def save_weights(
    path: str | os.PathLike[str], model_or_state: nn.Module | Mapping
) -> str:
    """Saves a plain state dict (tensors only, on CPU) atomically.

    Writes to a temp file in the same folder, then renames it over `path`.

    Returns:
        The `weights_hash` of what was saved.

    Raises:
        ValueError: if `model_or_state` holds anything but tensors.
    """
    state = {
        k: v.detach().to("cpu")
        for k, v in _plain_state(model_or_state, "model_or_state").items()
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return weights_hash(state)


def load_weights(path: str | os.PathLike[str] | BinaryIO) -> dict[str, torch.Tensor]:
    """Loads a plain state dict with ``weights_only`` (no code is unpickled).

    Args:
        path: A file path or a binary file object (e.g. `io.BytesIO`).

    Raises:
        ValueError: if the checkpoint carries pickled code (a module saved whole,
            an object of a custom class) or is not a dict of tensors.
    """
    source = path if isinstance(path, io.IOBase) else os.fspath(path)
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"load_weights refuses checkpoints with pickled code ({source!r} is not "
            "a plain state dict of tensors); re-save it with save_weights"
        ) from err
    if not isinstance(state, dict):
        raise ValueError(f"{source!r} holds a {type(state).__name__}, not a state dict")
    return _plain_state(state, f"checkpoint {source!r}")
