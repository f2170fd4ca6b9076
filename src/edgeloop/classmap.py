"""The class map: the environment's classes, palette and ignore index.

Each source maps its raw mask values onto it (e.g. CamVid's 11 and VOC's 255
both become the ignore index).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

IGNORE_INDEX = 255


@dataclass(frozen=True)
class ClassMap:
    """Class names, ids and palette, plus one ignore index.

    Attributes:
        names: Class names, in id order.
        ids: Class ids (mask values), one per name.
        palette: One RGB triple per class, for visualisation.
        ignore_index: The mask value that loss and metrics skip.
    """

    names: tuple[str, ...]
    ids: tuple[int, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = IGNORE_INDEX
    _lut_cache: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError("classes.names is empty: a class map needs classes")
        if len(self.names) != len(self.ids) or len(self.names) != len(self.palette):
            raise ValueError(
                "classes.names, classes.ids and classes.palette must have the same "
                f"length, got {len(self.names)}, {len(self.ids)}, {len(self.palette)}"
            )
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"classes.names has duplicates: {list(self.names)}")
        if len(set(self.ids)) != len(self.ids):
            raise ValueError(f"classes.ids has duplicates: {list(self.ids)}")
        bad = [i for i in self.ids if not 0 <= i < 255 or i == self.ignore_index]
        if bad:
            raise ValueError(
                f"classes.ids must be in [0, 254] and differ from the ignore index "
                f"{self.ignore_index}, got {bad}"
            )

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ClassMap:
        """Builds the class map from the `classes` parameters."""
        names = tuple(params["names"])
        ids = tuple(int(i) for i in params.get("ids", range(len(names))))
        palette = tuple(tuple(int(c) for c in rgb) for rgb in params["palette"])
        return cls(
            names=names,
            ids=ids,
            palette=palette,  # type: ignore[arg-type]
            ignore_index=int(params.get("ignore_index", IGNORE_INDEX)),
        )

    @property
    def num_classes(self) -> int:
        return len(self.ids)

    def name_of(self, class_id: int) -> str:
        return self.names[self.ids.index(class_id)]

    def id_of(self, name: str) -> int:
        if name not in self.names:
            raise ValueError(
                f"unknown class {name!r}; valid classes: {list(self.names)}"
            )
        return self.ids[self.names.index(name)]

    def remap(
        self, raw: np.ndarray, value_map: Mapping[int, int] | None = None
    ) -> tuple[np.ndarray, list[int]]:
        """Maps raw mask values onto the class map.

        Args:
            raw: (H, W) integer mask as read from the source.
            value_map: Raw value -> class id (or the ignore index). Raw values that
                are neither in it nor class ids nor the ignore index are invalid.

        Returns:
            The (H, W) uint8 mask, and the sorted list of invalid raw values
            (empty when the mask is valid; invalid pixels are left unmapped).
        """
        if raw.ndim != 2:
            raise ValueError(f"mask must be 2-D (H, W), got shape {raw.shape}")
        key = tuple(sorted((value_map or {}).items()))
        lut = self._lut_cache.get(key)
        if lut is None:
            lut = np.full(65536, -1, dtype=np.int32)
            for i in self.ids:
                lut[i] = i
            lut[self.ignore_index] = self.ignore_index
            for src, dst in (value_map or {}).items():
                if dst not in self.ids and dst != self.ignore_index:
                    raise ValueError(
                        f"value_map sends {src} to {dst}, which is neither a class id "
                        f"{list(self.ids)} nor the ignore index {self.ignore_index}"
                    )
                lut[int(src)] = int(dst)
            self._lut_cache[key] = lut
        if raw.dtype.kind not in "iu" or (
            raw.size and (raw.min() < 0 or raw.max() > 65535)
        ):
            values = np.unique(raw)
            return raw.astype(np.uint8, copy=False), [int(v) for v in values]
        mapped = lut[raw.astype(np.int64, copy=False)]
        invalid = mapped < 0
        if invalid.any():
            return raw.astype(np.uint8), sorted(int(v) for v in np.unique(raw[invalid]))
        return mapped.astype(np.uint8), []
