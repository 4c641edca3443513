"""Which embedder a job needs, decided once: the one an index records, built only when photos have to
be embedded, and checked against the index the moment it is built.

Re-indexing an unchanged folder (or one with only renames and deletions) must not pay for a model:
when the job's backbone spec, pooling and head fingerprint name what the index records, the recorded
identity stands in for the model until something has to be embedded. The weights' fingerprint is
only known once the model is built; :meth:`EmbedderSource.get` checks it then.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from imgembed.config import BackboneCfg
from imgembed.identity import IDENTITY_KEYS, check_identity, raw_identity

if TYPE_CHECKING:  # built only when something is embedded: a job that embeds nothing imports no torch
    from imgembed.model.embedder import Embedder
    from imgembed.model.onnx_embedder import OnnxEmbedder


class EmbedderSource:
    """The embedder of a job. ``identity`` is what the index will record (or must already hold)."""

    def __init__(self, cfg: BackboneCfg, head: str | None, index_dir: str | Path,
                 recorded: dict | None = None, embedder: Embedder | None = None) -> None:
        """``recorded``: the manifest of the existing index, if any; ``embedder``: one already built."""
        self.cfg, self.head, self.index_dir = cfg, head, index_dir
        self._recorded = recorded
        self._embedder = embedder
        if embedder is None and recorded is not None and same_by_name(recorded, cfg, head):
            self.identity = {k: raw_identity(recorded).get(k) for k in IDENTITY_KEYS}
        else:  # a new index, or another embedder: build it now (and let the identity check speak)
            self.identity = self.get().identity()

    @property
    def built(self) -> bool:
        return self._embedder is not None

    def get(self) -> Embedder:
        """The embedder, built now if it was not; raises StoreError if it is not what the index holds."""
        if self._embedder is None:
            from imgembed.model.embedder import Embedder

            self._embedder = Embedder.from_cfg(self.cfg, self.head)
        if self._recorded is not None:
            check_identity(self._recorded, self._embedder.identity(), self.index_dir)
        return self._embedder


def same_by_name(recorded: dict, cfg: BackboneCfg, head: str | None) -> bool:
    """Whether ``cfg`` and ``head`` name the embedder of ``recorded``, judged without building it.

    Backbone spec, pooling and head fingerprint are compared; the weights' fingerprint is checked
    against the real model as soon as anything has to be embedded. An index that projects its
    features itself is named by its backbone without a head.
    """
    recorded = raw_identity(recorded)
    if recorded.get("backbone") != cfg.name:
        return False
    if recorded.get("pool") is not None and recorded.get("pool") != cfg.pool:
        return False
    head_fp = None
    if head:
        from imgembed.model.head import head_paths

        try:
            head_fp = json.loads(head_paths(head)[1].read_text()).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            return False  # let the real loader report what is wrong with the head
    return recorded.get("head_fingerprint") == head_fp


def embedder_for(manifest: dict, index_dir: str | Path, device: str = "auto") -> Embedder | OnnxEmbedder:
    """Rebuild the embedder an index was made with (its backbone, pooling and head), checked against it.

    On the CPU, an image-only backbone that an index job exported on this machine runs on ONNX Runtime
    (:mod:`imgembed.model.onnx_embedder`), without importing torch (text backbones are never exported:
    a text query needs torch)."""
    if device in ("auto", "cpu"):
        from imgembed.model.onnx_embedder import onnx_embedder_for

        fast = onnx_embedder_for(manifest, index_dir)
        if fast is not None:
            check_identity(manifest, fast.identity(), index_dir)
            return fast
    from imgembed.model.backbones import create_backbone
    from imgembed.model.embedder import Embedder
    from imgembed.model.head import load_head

    cfg = BackboneCfg(name=manifest["backbone"], device=device, pool=manifest.get("pool") or "gem")
    head = load_head(Path(index_dir) / manifest["head"]) if manifest.get("head") else None
    embedder = Embedder(create_backbone(cfg), head, device=device)
    check_identity(manifest, embedder.identity(), index_dir)
    return embedder
