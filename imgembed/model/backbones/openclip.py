"""OpenCLIP backbones: ``open_clip:ARCH[:PRETRAINED]`` or ``open_clip:hf-hub:ORG/REPO``.

PRETRAINED is an open_clip tag (downloaded on a machine with network into the open_clip/Hugging
Face cache, or ``$IMGEMBED_CACHE_DIR``) or the path of a local checkpoint file. Weights that
cannot be had are an error: a CLIP model never falls back to random weights.

Without network the error comes at once: when ``HF_HUB_OFFLINE`` is set, or one short connection
attempt to the Hub fails, the model is loaded in the Hub's offline mode (cached weights load, absent
ones fail without the Hub client's retries) and open_clip's own error log is left out, so the user
reads one error.
"""

from __future__ import annotations

import logging
import os
import socket
from contextlib import contextmanager
from urllib.parse import urlparse

import torch

from imgembed.config import BackboneCfg
from imgembed.ingest.preprocess import Preprocess
from imgembed.model.backbones import (
    Backbone,
    BackboneError,
    did_you_mean,
    mostly_convolutional,
    register,
    state_fingerprint,
)

PROBE_TIMEOUT_S = 3.0  # one connection attempt to the Hub before a download; refused at once when offline

HOW_TO_SUPPLY = (
    "Download the weights on a machine with network (they are cached under ~/.cache/huggingface, "
    "or $IMGEMBED_CACHE_DIR when set) and copy the cache over, or pass a local checkpoint file: "
    "--backbone open_clip:{arch}:/path/to/open_clip_model.safetensors. "
    "Tags known for {arch}: {tags}"
)


class OpenClip(Backbone):
    def __init__(self, model: torch.nn.Module, tokenizer, preprocess: Preprocess) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.dim = int(model.visual.output_dim)
        self.fingerprint = state_fingerprint(model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x).float()  # (B, dim)

    @property
    def has_text(self) -> bool:
        return True

    @property
    def convolutional(self) -> bool:
        return mostly_convolutional(self.model.visual)  # the image tower only (RN50 is a CNN)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(texts).to(device)
        with torch.inference_mode():
            return self.model.encode_text(tokens).float()  # (T, dim)


def _preprocess_of(model: torch.nn.Module) -> Preprocess:
    import open_clip

    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg.get("size", 224)
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    resize_mode = cfg.get("resize_mode", "shortest")
    return Preprocess(
        size=size,
        # open_clip's default eval transform resizes the shorter side to the crop size
        resize=size if resize_mode in ("shortest", "squash") else int(round(size / 0.875)),
        mean=tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD)),
        interpolation=cfg.get("interpolation", "bicubic"),
    )


def _hub_offline_reason() -> str | None:
    """Why the Hugging Face Hub cannot be used now (offline mode, or one failed connection), or None."""
    from huggingface_hub import constants

    if constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=PROBE_TIMEOUT_S).close()
    except OSError as e:
        return f"{host} cannot be reached: {e.strerror or e}"
    return None


@contextmanager
def _hub_offline(on: bool):
    """The Hub client in offline mode while ``on``: cached files only, no connection, no retries."""
    from huggingface_hub import constants

    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = old or on
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


class _DropOpenClipErrors(logging.Filter):
    """open_clip logs its loading errors before raising them: the error raised says it once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "open_clip" not in record.pathname or record.levelno < logging.ERROR


@contextmanager
def _quiet_open_clip():
    drop, root = _DropOpenClipErrors(), logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _check_names(open_clip, arch: str, pretrained: str) -> None:
    """An unknown architecture or tag (not a file) raises ValueError with the nearest known one."""
    if arch not in open_clip.list_models():
        near = did_you_mean(arch, open_clip.list_models())
        raise ValueError(f"unknown open_clip architecture '{arch}'"
                         + (f"; did you mean open_clip:{near}:{pretrained}?" if near else "")
                         + " (open_clip.list_models() lists them)")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if not open_clip.get_pretrained_cfg(arch, pretrained) and not os.path.isfile(pretrained):
        near = did_you_mean(pretrained, tags)
        raise ValueError(f"'{pretrained}' is neither a weights tag of open_clip {arch} nor a file"
                         + (f"; did you mean open_clip:{arch}:{near}?" if near else ".")
                         + f" Tags known for {arch}: {', '.join(tags) or 'none'}")


@register("open_clip")
def _factory(arg: str, cfg: BackboneCfg) -> Backbone:
    try:
        import open_clip
    except ImportError as e:  # pragma: no cover - a dependency of the project
        raise BackboneError("open_clip backbones need the package open_clip_torch") from e

    if arg.startswith("hf-hub:"):
        model_name, pretrained, arch = arg, None, arg
    else:
        arch, _, pretrained = arg.partition(":")
        model_name = arch
        if not arch:
            raise ValueError("open_clip backbone needs an architecture: open_clip:ARCH[:PRETRAINED]")
        if not pretrained:
            raise BackboneError(
                f"open_clip:{arch} names no pretrained weights, and random weights would make "
                "meaningless vectors. " + HOW_TO_SUPPLY.format(
                    arch=arch, tags=", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none")
            )
        if pretrained.startswith(("/", ".", "~")) and not os.path.isfile(os.path.expanduser(pretrained)):
            raise BackboneError(f"open_clip weights file not found: {pretrained}")
        pretrained = os.path.expanduser(pretrained)
        _check_names(open_clip, arch, pretrained)
    local = pretrained is not None and os.path.isfile(pretrained)
    offline = None if local else _hub_offline_reason()
    tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) if arch else ""
    try:
        with _hub_offline(bool(offline) or local), _quiet_open_clip():
            model, _, _ = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained, cache_dir=os.environ.get("IMGEMBED_CACHE_DIR"),
            )
            tokenizer = open_clip.get_tokenizer(model_name)
    except Exception as e:  # the library raises several types for "cannot get weights"
        if offline:
            raise BackboneError(
                f"the weights of open_clip:{arg} are not on this machine and cannot be downloaded now "
                f"({offline}). " + HOW_TO_SUPPLY.format(arch=arch, tags=tags or "none")) from e
        raise BackboneError(
            f"could not load open_clip '{arg}': {e}. " + HOW_TO_SUPPLY.format(arch=arch, tags=tags or "none")
        ) from e
    return OpenClip(model.eval(), tokenizer, _preprocess_of(model))

