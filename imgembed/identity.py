"""What made a set of vectors: the embedder identity that an index manifest, a shards folder and a
running job record, and the one comparison between two of them.

An identity is a dict with :data:`IDENTITY_KEYS` (as :meth:`imgembed.model.embedder.Embedder.identity`
returns it); vectors of two identities that differ in any key must never share an index.
"""

from __future__ import annotations

import json
from pathlib import Path

from imgembed.errors import StoreError

IDENTITY_KEYS = ("backbone", "backbone_fingerprint", "pool", "head_fingerprint", "dim", "preprocess")


def raw_identity(recorded: dict) -> dict:
    """The identity of the features an index is made from: for an index that projects them itself
    (its ``projection`` record), the embedder without that projection; else the recorded one."""
    projection = recorded.get("projection")
    return projection["raw"] if projection else recorded


def identity_diffs(recorded: dict, identity: dict) -> list[str]:
    """The keys on which an embedder's ``identity`` differs from a ``recorded`` one. An index that
    projects its features itself takes both the embedder of its features and that embedder with
    its projection as head (which is how queries are embedded)."""
    identity = json.loads(json.dumps(identity))  # tuples -> lists, as stored
    diffs = [k for k in IDENTITY_KEYS if recorded.get(k) != identity.get(k)]
    if diffs and recorded.get("projection"):
        raw = recorded["projection"]["raw"]
        if all(raw.get(k) == identity.get(k) for k in IDENTITY_KEYS):
            return []
    return diffs


def describe(identity: dict) -> str:
    return (f"backbone {identity.get('backbone')} (weights {identity.get('backbone_fingerprint')}, "
            f"pool {identity.get('pool')}), head {identity.get('head_fingerprint') or 'none'}, "
            f"dim {identity.get('dim')}")


def check_identity(recorded: dict, identity: dict, index_dir: str | Path) -> None:
    """Refuse to mix vectors from different embedders in one index. Raises StoreError."""
    diffs = identity_diffs(recorded, identity)
    if diffs:
        raise StoreError(
            f"index {index_dir} was built with {describe(recorded)}; this run uses {describe(identity)} "
            f"(differs in: {', '.join(diffs)}). Use the same --backbone/--head, or another --index.")
