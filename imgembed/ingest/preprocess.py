"""How a decoded photo becomes model input: the size, crop, normalisation and interpolation.

Each backbone carries its own :class:`Preprocess`; the reader and the GPU decoder follow it, so
decoding needs no part of the model layer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes model input. Travels with the backbone, never as a global."""

    size: int = 224  # square crop fed to the model
    resize: int = 256  # shorter side before the centre crop
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"  # "bicubic" or "bilinear"

    def to_dict(self) -> dict:
        return asdict(self)
