"""The training step, after torchvision's segmentation reference scripts.

`train_one_epoch` is the project's one training loop body; `edgeloop.training.fit`
owns epochs, schedules and model selection around it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from edgeloop.progress import tqdm

log = logging.getLogger(__name__)

IGNORE_INDEX = 255


def criterion(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    class_weights: torch.Tensor | None = None,
    dice_weight: float = 0.0,
) -> torch.Tensor:
    """Mean (optionally class-weighted) cross entropy over labelled pixels,
    plus `dice_weight` times the soft Dice loss.

    Pixels with 255 are ignored. Class weights keep a rare class from being
    drowned by the background (a random-init model otherwise settles on
    predicting background everywhere).

    A batch with no labelled pixel gives a zero loss that keeps the graph (plain
    cross entropy would give NaN and poison the weights).

    Args:
        logits: (B, K, H, W) logits.
        target: (B, H, W) int64 class ids, 255 = ignore.
        class_weights: (K,) weight per class, or None.
        dice_weight: Weight of `soft_dice_loss` (0: cross entropy only). Dice
            scores each class by overlap, whatever its size, so small objects
            count as much as the background (what mIoU rewards).

    Raises:
        ValueError: if the shapes do not match.
    """
    if logits.ndim != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"logits (B, K, H, W) and target (B, H, W) do not match: "
            f"logits {tuple(logits.shape)}, target {tuple(target.shape)}"
        )
    if not bool((target != IGNORE_INDEX).any()):
        return logits.sum() * 0.0
    loss = F.cross_entropy(
        logits, target, weight=class_weights, ignore_index=IGNORE_INDEX
    )
    if dice_weight:
        loss = loss + dice_weight * soft_dice_loss(logits, target)
    return loss


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice over the classes present in the batch's labels.

    Softmax probabilities against one-hot labels, summed over the batch
    (Milletari et al., V-Net, 2016); ignored pixels (255) count for nothing.
    Classes absent from the labels are left out, so a batch without airliners
    does not push airliner probabilities to zero.

    Args:
        logits: (B, K, H, W) logits.
        target: (B, H, W) int64 class ids, 255 = ignore.
    """
    valid = (target != IGNORE_INDEX).unsqueeze(1)  # (B, 1, H, W)
    probs = logits.softmax(dim=1) * valid
    onehot = F.one_hot(target.clamp(max=logits.shape[1] - 1), logits.shape[1])
    onehot = onehot.permute(0, 3, 1, 2).to(probs.dtype) * valid  # (B, K, H, W)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    present = onehot.sum(dims) > 0
    dice = (2 * inter + 1.0) / (total + 1.0)
    return 1.0 - dice[present].mean()


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device | str = "cpu",
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    class_weights: torch.Tensor | None = None,
    dice_weight: float = 0.0,
    ema: torch.optim.swa_utils.AveragedModel | None = None,
    progress: bool = False,
) -> float:
    """One pass over `loader`: forward, loss, backward, step for each batch.

    The caller sets the dataset's epoch (`SegmentationSet.set_epoch`) beforehand;
    this only iterates.

    Args:
        model: Maps (B, 3, H, W) images to (B, K, H, W) logits; put in train mode.
        optimizer: Stepped after every batch.
        loader: Yields (images (B, 3, H, W) float, masks (B, H, W) int64).
        device: Where to run.
        scheduler: Stepped after every batch, as in the torchvision reference
            (per-iteration LR schedules). Per-epoch schedules belong to the caller.
        class_weights: (K,) loss weight per class, or None.
        dice_weight: Weight of the soft Dice term (`criterion`).
        ema: A running average of `model`'s weights, updated after every step.
        progress: Show a tqdm bar.

    Returns:
        The mean loss over batches.

    Raises:
        ValueError: if `loader` yields no batch.
    """
    device = torch.device(device)
    model.train()
    total = torch.zeros((), device=device)
    batches = 0
    bar = tqdm(loader, desc="train", leave=False, disable=not progress)
    for images, masks in bar:
        images = images.to(device, non_blocking=True)  # (B, 3, H, W)
        masks = masks.to(device, non_blocking=True)  # (B, H, W)
        logits = model(images)  # (B, K, H, W) logits
        loss = criterion(
            logits, masks, class_weights=class_weights, dice_weight=dice_weight
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update_parameters(model)
        if scheduler is not None:
            scheduler.step()
        total += loss.detach()
        batches += 1
        if progress:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    if batches == 0:
        raise ValueError("loader yielded no batches (empty dataset or drop_last?)")
    return float(total) / batches
