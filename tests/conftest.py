"""Shared fixtures: generated photos, small local model files, an isolated feature cache.
Helpers that tests import live in ``helpers.py``."""

from __future__ import annotations

import os

# Tests never reach a model hub: set before any Hugging Face import reads it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
from pathlib import Path

import pytest
from helpers import write_photos


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("IMGEMBED_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("IMGEMBED_SETTINGS", str(tmp_path_factory.mktemp("settings") / "app.json"))  # the app's


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
