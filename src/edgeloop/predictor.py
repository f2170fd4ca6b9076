"""The predictor: the one way to run a segmentation model on images.

Evaluation, the validation step of `fit`, the server, batch scoring and
pseudo-labelling all call it, so masks and uncertainty scores mean the same
thing everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SCORE_NAMES = ("mean_max_prob", "mean_entropy", "mean_margin", "low_conf_frac")


@dataclass(frozen=True)
class Prediction:
    """One image's prediction.

    Attributes:
        mask: (H, W) uint8 class ids at the image's own size.
        scores: Uncertainty scores (`SCORE_NAMES`) and `frac:<class>`, the pixel
            fraction predicted per class.
    """

    mask: np.ndarray
    scores: dict[str, float]


class Predictor:
    """Batched inference with per-image uncertainty scores.

    Args:
        model: Maps (B, 3, H, W) normalised images to (B, K, H, W) logits.
        class_names: One name per output channel.
        mean, std: Normalisation the model was trained with.
        input_size: (height, width) the model runs at; images are resized to it
            and logits resized back. None runs at each image's own size.
        batch_size: Images per forward pass.
        low_conf_threshold: A pixel whose max probability is below it is
            low-confidence.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        class_names: Sequence[str],
        mean: Sequence[float],
        std: Sequence[float],
        input_size: tuple[int, int] | None = None,
        batch_size: int = 16,
        low_conf_threshold: float = 0.5,
        device: str | torch.device = "cpu",
    ) -> None:
        self.model = model
        self.class_names = tuple(class_names)
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.input_size = tuple(input_size) if input_size else None
        self.batch_size = int(batch_size)
        self.low_conf_threshold = float(low_conf_threshold)

    @torch.no_grad()
    def predict(
        self, images: Sequence[np.ndarray], *, with_scores: bool = True
    ) -> list[Prediction]:
        """Predicts masks (and scores) for (H, W, 3) uint8 images of any sizes."""
        for i, image in enumerate(images):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(
                    f"images[{i}] must be (H, W, 3) uint8, "
                    f"got {image.shape} {image.dtype}"
                )
        was_training = self.model.training
        self.model.eval()
        out: list[Prediction | None] = [None] * len(images)
        # Batch images of equal size together; keep the caller's order.
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(image.shape[:2], []).append(i)
        try:
            for size, idx in by_size.items():
                for start in range(0, len(idx), self.batch_size):
                    chunk = idx[start : start + self.batch_size]
                    batch = np.stack([images[i] for i in chunk])
                    for i, pred in zip(
                        chunk,
                        self._predict_batch(batch, size, with_scores),
                        strict=True,
                    ):
                        out[i] = pred
        finally:
            self.model.train(was_training)
        return out  # type: ignore[return-value]

    def _predict_batch(
        self, batch: np.ndarray, size: tuple[int, int], with_scores: bool
    ) -> list[Prediction]:
        x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        x = (x - self.mean.to(self.device)) / self.std.to(self.device)
        if self.input_size and self.input_size != size:
            x = F.interpolate(
                x, size=self.input_size, mode="bilinear", align_corners=False
            )
        logits = self.model(x)  # (B, K, h, w)
        if logits.shape[-2:] != size:
            logits = F.interpolate(
                logits, size=size, mode="bilinear", align_corners=False
            )
        if not with_scores:
            masks = logits.argmax(1).to(torch.uint8).cpu().numpy()
            return [Prediction(mask=m, scores={}) for m in masks]
        probs = logits.float().softmax(1)  # (B, K, H, W)
        top2 = probs.topk(2, dim=1).values if probs.shape[1] > 1 else probs
        max_prob = top2[:, 0]
        margin = top2[:, 0] - top2[:, 1] if probs.shape[1] > 1 else max_prob
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1)
        masks = probs.argmax(1)
        fracs = F.one_hot(masks, probs.shape[1]).float().mean(dim=(1, 2))  # (B, K)
        low = (max_prob < self.low_conf_threshold).float().mean(dim=(1, 2))
        results = []
        for b in range(probs.shape[0]):
            scores = {
                "mean_max_prob": float(max_prob[b].mean()),
                "mean_entropy": float(entropy[b].mean()),
                "mean_margin": float(margin[b].mean()),
                "low_conf_frac": float(low[b]),
            }
            scores.update(
                {
                    f"frac:{n}": float(fracs[b, k])
                    for k, n in enumerate(self.class_names)
                }
            )
            results.append(
                Prediction(mask=masks[b].to(torch.uint8).cpu().numpy(), scores=scores)
            )
        return results
