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


def identity_diffs(recorded: dict, identity: dict) -> list[str]:
    """The keys on which an embedder's ``identity`` differs from a ``recorded`` one."""
    identity = json.loads(json.dumps(identity))  # tuples -> lists, as stored
    return [k for k in IDENTITY_KEYS if recorded.get(k) != identity.get(k)]


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
