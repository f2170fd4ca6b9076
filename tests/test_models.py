"""Architectures, weight sources, weights-only checkpoints and the training step."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import mobilenet_v3_large, resnet18

from edgeloop.data import SegmentationSet, make_loader
from edgeloop.engine import criterion, soft_dice_loss, train_one_epoch
from edgeloop.models import (
    ARCHITECTURES,
    SMALL_MODEL_PARAMS,
    build_model,
    count_parameters,
    imagenet_backbone_path,
    load_weights,
    save_weights,
    weights_hash,
)


@pytest.fixture(autouse=True)
def empty_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub dir, and any download attempt fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("build_model tried to download weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path / "torch" / "hub"


class Custom:
    """Not a tensor: pickling it stores a reference to this class."""

    def __init__(self) -> None:
        self.value = 1


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_maps_to_input_resolution(arch: str) -> None:
    torch.manual_seed(0)
    model, source = build_model(arch, 4, pretrained=False)
    assert source == "random"
    with torch.no_grad():
        # train mode, batch 2
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 4, 64, 64)
        # deeplabv3's image-pooling BatchNorm needs batch > 1 in train mode
        model.eval()
        assert model(torch.randn(1, 3, 96, 128)).shape == (1, 4, 96, 128)
        assert model(torch.randn(1, 3, 45, 61)).shape == (1, 4, 45, 61)
    n = count_parameters(model)
    print(f"{arch}: {n:,} parameters")
    if arch == "lraspp_mobilenet_v3_large":
        assert n < SMALL_MODEL_PARAMS
    else:
        assert n > SMALL_MODEL_PARAMS


def test_random_init_logs_one_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="edgeloop.models"):
        _, source = build_model("lraspp_mobilenet_v3_large", 3)
    assert source == "random"
    lines = [r.getMessage() for r in caplog.records if r.name == "edgeloop.models"]
    assert len(lines) == 1
    assert "no ImageNet weights in" in lines[0]
    assert "mobilenet_v3_large-8738ca79.pth" in lines[0]
    assert lines[0].endswith("random init")


def test_checkpoint_weights_are_identical(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model, _ = build_model("lraspp_mobilenet_v3_large", 4, pretrained=False)
    path = tmp_path / "w.pt"
    saved = save_weights(path, model)
    torch.manual_seed(2)  # a different random init underneath
    loaded, source = build_model("lraspp_mobilenet_v3_large", 4, weights_path=path)
    assert source == f"checkpoint:{path}"
    assert (
        weights_hash(loaded.state_dict()) == saved == weights_hash(model.state_dict())
    )


def test_checkpoint_of_an_imagenet_backbone(tmp_path: Path) -> None:
    torch.manual_seed(0)
    backbone = resnet18()
    path = tmp_path / "resnet18.pt"
    save_weights(path, backbone)
    model, source = build_model("unet_resnet18", 2, weights_path=path)
    assert source == f"checkpoint:{path}"
    assert torch.equal(model.backbone.conv1.weight, backbone.conv1.weight)
    assert torch.equal(
        model.backbone.layer4[1].bn2.running_var, backbone.layer4[1].bn2.running_var
    )


def test_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="weights_path"):
        build_model("unet_resnet18", 2, weights_path=tmp_path / "missing.pt")
    model, _ = build_model("lraspp_mobilenet_v3_large", 4, pretrained=False)
    save_weights(tmp_path / "k4.pt", model)
    with pytest.raises(ValueError, match="num_classes=5"):
        build_model("lraspp_mobilenet_v3_large", 5, weights_path=tmp_path / "k4.pt")
    save_weights(tmp_path / "other.pt", {"a.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match="missing backbone keys"):
        build_model("unet_resnet18", 2, weights_path=tmp_path / "other.pt")


@pytest.mark.parametrize(
    ("arch", "make_backbone", "module"),
    [
        ("lraspp_mobilenet_v3_large", mobilenet_v3_large, "net.backbone"),
        ("deeplabv3_mobilenet_v3_large", mobilenet_v3_large, "net.backbone"),
        ("unet_resnet18", resnet18, "net.encoder"),
    ],
)
def test_local_imagenet_backbone_is_used_without_download(
    arch: str,
    make_backbone: type[nn.Module],
    module: str,
    empty_hub: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A stand-in for the torchvision file, in the (temp) hub cache.
    torch.manual_seed(3)
    reference = make_backbone()
    path = imagenet_backbone_path(arch)
    assert Path(path).parent == empty_hub / "checkpoints"
    os.makedirs(os.path.dirname(path))
    torch.save(reference.state_dict(), path)

    with caplog.at_level(logging.INFO, logger="edgeloop.models"):
        model, source = build_model(arch, 3)
    assert source == f"imagenet-backbone:{path}"
    assert [r.getMessage() for r in caplog.records] == [
        f"{arch}: ImageNet backbone weights from {path}"
    ]
    first = next(iter(model.get_submodule(module).parameters()))
    assert torch.equal(first, next(iter(reference.parameters())))

    _, source = build_model(arch, 3, pretrained=False)
    assert source == "random"


def test_unknown_architecture_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="arch must be one of") as err:
        build_model("segformer", 3)
    for arch in ARCHITECTURES:
        assert arch in str(err.value)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("unet_resnet18", 0)


def test_save_load_round_trip(tmp_path: Path) -> None:
    state = {
        "w": torch.randn(3, 4),
        "b": torch.arange(5, dtype=torch.int64),
        "h": torch.randn(2, 2).to(torch.bfloat16),
        "n": torch.tensor(7),
        "t": torch.randn(4, 3).t(),  # non-contiguous
    }
    digest = save_weights(tmp_path / "sub" / "w.pt", state)
    assert digest == weights_hash(state)
    loaded = load_weights(tmp_path / "sub" / "w.pt")
    assert weights_hash(loaded) == digest
    assert list((tmp_path / "sub").iterdir()) == [tmp_path / "sub" / "w.pt"]
    # From bytes too, as the registry reads blobs.
    data = (tmp_path / "sub" / "w.pt").read_bytes()
    assert weights_hash(load_weights(io.BytesIO(data))) == digest
    # Deterministic, order-independent, content-sensitive.
    assert weights_hash(dict(reversed(list(state.items())))) == digest
    changed = dict(state, w=state["w"] + 1)
    assert weights_hash(changed) != digest


def test_load_weights_refuses_pickled_code(tmp_path: Path) -> None:
    whole = tmp_path / "module.pt"
    torch.save(nn.Linear(2, 2), whole)
    custom = tmp_path / "custom.pt"
    torch.save({"w": torch.zeros(1), "extra": Custom()}, custom)
    for path in (whole, custom):
        with pytest.raises(ValueError, match="pickled code") as err:
            load_weights(path)
        assert err.value.__cause__ is not None
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a state dict"):
        load_weights(tmp_path / "list.pt")
    with pytest.raises(ValueError, match="model_or_state"):
        save_weights(tmp_path / "bad.pt", {"w": 1.0})


def _squares(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Dark noisy images with one bright square: class 1 inside, 0 outside."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(n, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n):
        s = int(rng.integers(8, 16))
        y, x = rng.integers(0, size - s, size=2)
        images[i, y : y + s, x : x + s] = 220
        masks[i, y : y + s, x : x + s] = 1
    return images, masks


def test_criterion_ignores_255() -> None:
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), 255, dtype=torch.int64)
    loss = criterion(logits, target)
    assert loss.item() == 0.0
    loss.backward()  # keeps the graph
    target[0, 0, 0] = 1
    expected = -torch.log_softmax(logits[0, :, 0, 0], 0)[1]
    assert torch.allclose(criterion(logits, target), expected)
    with pytest.raises(ValueError, match="target"):
        criterion(logits, target[:, :2])


def test_soft_dice_by_hand_ignores_255_and_absent_classes() -> None:
    # 1 image, 3 classes, 2x2 pixels: labels [[0, 1], [255, 0]]; class 2 absent.
    target = torch.tensor([[[0, 1], [255, 0]]])
    probs = torch.tensor(
        [[[0.8, 0.1], [0.3, 0.6]], [[0.1, 0.7], [0.3, 0.2]], [[0.1, 0.2], [0.4, 0.2]]]
    )[None]
    logits = probs.log()  # softmax(log p) = p, as each pixel sums to 1
    # class 0: inter 0.8 + 0.6, sum of probs 0.8 + 0.1 + 0.6 (valid pixels), 2 labels
    d0 = (2 * 1.4 + 1) / (1.5 + 2 + 1)
    # class 1: inter 0.7, probs 0.1 + 0.7 + 0.2, 1 label
    d1 = (2 * 0.7 + 1) / (1.0 + 1 + 1)
    expected = 1 - (d0 + d1) / 2
    assert soft_dice_loss(logits, target).item() == pytest.approx(expected, rel=1e-5)
    ce = criterion(logits, target)
    both = criterion(logits, target, dice_weight=0.5)
    assert both.item() == pytest.approx(ce.item() + 0.5 * expected, rel=1e-5)
    # A perfect prediction has (almost) no Dice loss.
    perfect = torch.nn.functional.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2)
    assert soft_dice_loss(perfect.float() * 50, target).item() < 1e-6


def test_train_one_epoch_decreases_the_loss() -> None:
    torch.manual_seed(0)
    images, masks = _squares(8, 32, seed=0)
    dataset = SegmentationSet(images, masks)
    loader = make_loader(dataset, batch_size=4, seed=0)
    model, _ = build_model("lraspp_mobilenet_v3_large", 2, pretrained=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for epoch in range(6):
        dataset.set_epoch(epoch)
        losses.append(train_one_epoch(model, optimizer, loader))
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses
