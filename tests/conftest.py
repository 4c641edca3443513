"""Shared fixtures: generated photos, small local model files, an isolated feature cache."""

from __future__ import annotations

import os

# Tests never reach a model hub: set before any Hugging Face import reads it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "photos"
TINY = "test-tiny"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("IMGEMBED_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


def make_photo(seed: int, size=(96, 72), kind: int | None = None) -> Image.Image:
    """A synthetic photo: a class-dependent colour and shape on noise; same seed, same image."""
    rng = np.random.default_rng(seed)
    kind = seed % 3 if kind is None else kind
    w, h = size
    base = np.array([(200, 40, 40), (40, 200, 40), (40, 40, 200)][kind], dtype=np.float64)
    arr = base + rng.normal(0, 25, (h, w, 3))
    yy, xx = np.mgrid[0:h, 0:w]
    if kind == 0:
        arr[(yy // 8) % 2 == 0] *= 0.4
    elif kind == 1:
        arr[(xx // 8) % 2 == 0] *= 0.4
    else:
        arr[((xx - w / 2) ** 2 + (yy - h / 2) ** 2) < (min(w, h) / 3) ** 2] = 255
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def write_photos(folder: Path, n: int, start: int = 0, classes: bool = False) -> list[Path]:
    """``n`` JPEGs under ``folder`` (in sub-folders c0/c1/c2 when ``classes``)."""
    out = []
    for i in range(start, start + n):
        sub = folder / f"c{i % 3}" if classes else folder
        sub.mkdir(parents=True, exist_ok=True)
        p = sub / f"img{i:04d}.jpg"
        make_photo(i).save(p, quality=90)
        out.append(p)
    return out


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    write_photos(folder, 12, classes=True)
    return folder


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> str:
    """Spec of a small random-init OpenCLIP model saved to a local checkpoint file."""
    import open_clip
    import torch

    d = tmp_path_factory.mktemp("openclip")
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }
    (d / "imgembed-test-vit.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(d / "imgembed-test-vit.json")
    torch.manual_seed(0)
    model = open_clip.create_model("imgembed-test-vit")
    torch.save(model.state_dict(), d / "tiny_clip.pt")
    return f"open_clip:imgembed-test-vit:{d / 'tiny_clip.pt'}"


@pytest.fixture(scope="session")
def tiny_torchvision(tmp_path_factory) -> str:
    """Spec of a random-init torchvision resnet18 saved to a local state_dict file."""
    import torch
    import torchvision

    d = tmp_path_factory.mktemp("tv")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), d / "resnet18.pth")
    return f"torchvision:resnet18:{d / 'resnet18.pth'}"
