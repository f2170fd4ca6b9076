"""Kedro datasets for model input (image/mask sets) and trained models."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from kedro.io import AbstractDataset
from kedro_datasets._typing import ImagePreview
from PIL import Image

from edgeloop.fileio import atomic_write
from edgeloop.models import load_weights, save_weights
from edgeloop.registry import TrainedModel
from edgeloop.training import ModelInput

# A fixed, readable palette for previews (class id -> RGB); 255 = ignore shows grey.
_PREVIEW_PALETTE = np.array(
    [
        [0, 0, 0],
        [220, 20, 60],
        [0, 114, 189],
        [237, 177, 32],
        [119, 172, 48],
        [126, 47, 142],
        [77, 190, 238],
        [162, 20, 47],
        [255, 127, 14],
        [148, 103, 189],
        [140, 86, 75],
        [23, 190, 207],
    ],
    dtype=np.uint8,
)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) image with the (H, W) mask's classes blended over it."""
    colours = _PREVIEW_PALETTE[mask % len(_PREVIEW_PALETTE)]
    colours[mask == 255] = 128
    blend = mask != 0
    out = image.astype(np.float32)
    out[blend] = (1 - alpha) * out[blend] + alpha * colours[blend]
    return out.astype(np.uint8)


class ModelInputDataset(AbstractDataset[ModelInput, ModelInput]):
    """A `ModelInput` as one ``.npz``; kedro-viz previews masks over images."""

    def __init__(
        self, *, filepath: str, metadata: dict[str, Any] | None = None
    ) -> None:
        self._filepath = Path(filepath)
        self.metadata = metadata

    def save(self, data: ModelInput) -> None:
        buf = io.BytesIO()
        np.savez(
            buf,
            images=data.images,
            masks=data.masks,
            image_ids=data.image_ids.astype(str),
            splits=data.splits.astype(str),
            weights=data.weights,
            class_names=np.array(data.class_names, dtype=str),
        )
        atomic_write(self._filepath, buf.getvalue())

    def load(self) -> ModelInput:
        with np.load(self._filepath, allow_pickle=False) as z:
            return ModelInput(
                images=z["images"],
                masks=z["masks"],
                image_ids=z["image_ids"],
                splits=z["splits"],
                weights=z["weights"],
                class_names=tuple(z["class_names"].tolist()),
            )

    def preview(self, n: int = 8) -> ImagePreview:
        """A strip of the first `n` images with their masks over them."""
        data = self.load()
        tiles = [
            overlay(i, m) for i, m in zip(data.images[:n], data.masks[:n], strict=True)
        ]
        buf = io.BytesIO()
        Image.fromarray(np.concatenate(tiles, axis=1)).save(buf, format="PNG")
        return ImagePreview(base64.b64encode(buf.getvalue()).decode())

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}


class TrainedModelDataset(AbstractDataset[TrainedModel, TrainedModel]):
    """Weights (``weights.pt``, a plain state dict) plus ``metadata.json`` in a folder.

    Loading uses ``weights_only``: a checkpoint carrying pickled code is refused.
    """

    def __init__(self, *, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self.metadata = metadata

    def save(self, data: TrainedModel) -> None:
        self._path.mkdir(parents=True, exist_ok=True)
        save_weights(self._path / "weights.pt", data.state_dict)
        meta = json.dumps(dict(data.metadata), indent=1, sort_keys=True, default=str)
        atomic_write(self._path / "metadata.json", meta.encode())

    def load(self) -> TrainedModel:
        state = load_weights(self._path / "weights.pt")
        meta = json.loads((self._path / "metadata.json").read_text())
        return TrainedModel(state_dict=state, metadata=meta)

    def _exists(self) -> bool:
        return (self._path / "weights.pt").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
