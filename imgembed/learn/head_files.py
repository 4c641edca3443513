"""What ``imgembed train-head`` writes: the head with its training record, and its curve."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from imgembed.config import TrainCfg
from imgembed.learn.plots import plot_curve
from imgembed.learn.train import TrainResult
from imgembed.model.head import HeadError, head_paths, save_head


def save_trained_head(path: str | Path, result: TrainResult, cfg: TrainCfg, source: str = "") -> tuple[Path, Path]:
    """Write the head (safetensors + JSON with config, summary and history) and its curve PNG."""
    method = "supervised" if cfg.labels == "folders" else "self-supervised"
    png = head_paths(path)[0].with_suffix(".png")
    try:
        weights = save_head(path, result.head, extra={
            "method": method, "train": asdict(cfg), "source": source, "result": result.summary(),
            "history": result.history})
        plot_curve(result, png, title=f"{method} head, {cfg.dim}-d, {cfg.loss}")
    except OSError as e:  # a full disk, a folder nobody may write to
        raise HeadError(f"cannot write the head {head_paths(path)[0]}: {e.strerror or e}; free disk space or "
                        "pass another --out, then train again (the cached features make it quick)") from e
    return weights, png
