"""What ``imgembed train-head`` writes: the head with its training record, and its curve; and the
check that a head is used on the collection it was trained on."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from imgembed.config import TrainCfg
from imgembed.learn.plots import plot_curve
from imgembed.learn.train import TrainResult
from imgembed.model.head import HeadError, head_paths, read_head_info, save_head

logger = logging.getLogger(__name__)


def features_fingerprint(feats: np.ndarray) -> str:
    """A fingerprint of a set of feature vectors, independent of their order (16 hex digits)."""
    rows = np.round(np.asarray(feats, np.float32), 3).astype(np.float16)
    digests = sorted(hashlib.sha256(r.tobytes()).digest() for r in rows)
    return hashlib.sha256(b"".join(digests)).hexdigest()[:16]


def collection_record(folder: str | Path, feats: np.ndarray) -> dict:
    """What a head records of the collection it was trained on: path, photo count, features fingerprint."""
    return {"path": str(Path(folder).resolve()), "count": int(len(feats)), "fingerprint": features_fingerprint(feats)}


def save_trained_head(path: str | Path, result: TrainResult, cfg: TrainCfg, source: str = "",
                      collection: dict | None = None) -> tuple[Path, Path]:
    """Write the head (safetensors + JSON with config, summary, history and the training collection)
    and its curve PNG."""
    method = "supervised" if cfg.labels == "folders" else "label-free"
    png = head_paths(path)[0].with_suffix(".png")
    try:
        weights = save_head(path, result.head, extra={
            "method": method, "train": asdict(cfg), "source": source, "collection": collection,
            "result": result.summary(), "history": result.history})
        plot_curve(result, png,
                   title=f"{method} head, {cfg.dim}-d" + (f", {cfg.loss}" if method == "supervised" else ""))
    except OSError as e:  # a full disk, a folder nobody may write to
        raise HeadError(f"cannot write the head {head_paths(path)[0]}: {e.strerror or e}; free disk space or "
                        "pass another --out, then train again (the cached features make it quick)") from e
    return weights, png


def other_collection(head_path: str | Path, feats: np.ndarray) -> str | None:
    """One line of warning when the head was trained on another collection than ``feats``; else None.

    A head trained on other photos is applied as asked, but a label-free one fitted on one collection
    cost up to 31 mAP points on another (README, "Label-free head"): the user should know.
    """
    record = read_head_info(head_path).get("collection")
    if not isinstance(record, dict) or record.get("fingerprint") == features_fingerprint(feats):
        return None
    return (f"head {Path(head_path).name} was trained on another collection ({record.get('path')}, "
            f"{record.get('count')} photos), not these {len(feats)} photos; its quality here is unknown: "
            "train one on them with imgembed train-head FOLDER --labels none")
