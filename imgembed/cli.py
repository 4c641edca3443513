"""Command line: ``imgembed index | search | info | eval | verify | train-head``. Parses, calls the library, prints."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path

from imgembed.config import (
    COMPILE_MODES,
    DBA_MODES,
    DEFAULT_BACKBONE,
    DEFAULT_INDEX,
    INDEX_TYPES,
    LABEL_MODES,
    LOSSES,
    POOLS,
    BackboneCfg,
    EmbedCfg,
    IndexCfg,
    IndexJobCfg,
    ReaderCfg,
    TrainCfg,
    check_device,
    default_index,
)
from imgembed.errors import StoreError
from imgembed.text import printable

# Only light modules are imported above: torch, PIL and faiss load inside main(), where Ctrl-C
# during start-up is answered with one line like any other interruption.

logger = logging.getLogger("imgembed")


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's to fix: printed as one line, exit status 1, no traceback.

    OSError last: a full disk, a folder given for a file, a path that is gone."""
    from imgembed.ingest.reader import ImageSkipped
    from imgembed.model.backbones import BackboneError
    from imgembed.model.head import HeadError

    return (StoreError, BackboneError, HeadError, ImageSkipped, ValueError, OSError)


def say(line: str, err: bool = False) -> None:
    """Print one line, control characters escaped: a file name cannot forge another line."""
    print(printable(line), file=sys.stderr if err else sys.stdout)


def show_progress(a: argparse.Namespace) -> bool:
    """Progress bars on stderr: on a terminal, or when $IMGEMBED_PROGRESS is 1; never with --no-progress."""
    if getattr(a, "no_progress", False):
        return False
    return sys.stderr.isatty() or os.environ.get("IMGEMBED_PROGRESS") == "1"


def _add_index_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", default=default_index(),
                   help=f"index folder (default: $IMGEMBED_INDEX or ./{DEFAULT_INDEX})")


def _add_index_type_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index-type", default=IndexCfg.index_type, choices=("auto", *INDEX_TYPES),
                   help="auto (exact up to 50,000 photos, then IVF), or one of " + ", ".join(INDEX_TYPES))


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default=DEFAULT_BACKBONE,
                   help="efficientnet-lite0 (default, offline), open_clip:ARCH:WEIGHTS, torchvision:NAME:WEIGHTS")
    p.add_argument("--pool", default=BackboneCfg.pool, choices=POOLS, help="CNN feature pooling")
    _add_device_arg(p)
    p.add_argument("--compile", nargs="?", const="on", default=BackboneCfg.compile, choices=COMPILE_MODES,
                   help="torch.compile the model: auto (CNNs on a CPU from 5,000 photos: 1.4x faster after "
                        "a one-off compile of about 30 s), on, off")
    p.add_argument("--batch-size", type=int, default=EmbedCfg.batch_size,
                   help="photos per batch; 0 (default): 32 on a CPU, on CUDA what the free GPU memory holds")
    p.add_argument("--workers", type=int, default=EmbedCfg.workers, help="decode processes (-1: one per core)")
    p.add_argument("--max-pixels", type=int, default=ReaderCfg.max_pixels,
                   help="refuse images declaring more pixels than this (decompression bombs)")
    p.add_argument("--max-bytes", type=int, default=ReaderCfg.max_bytes, help="skip files larger than this")


def _device(name: str) -> str:
    try:
        return check_device(name)
    except ValueError as e:  # argparse shows this message (its own would be "invalid value")
        raise argparse.ArgumentTypeError(str(e)) from e


def _add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=BackboneCfg.device, type=_device,
                   help="auto (cuda, mps, cpu), cpu, cuda, cuda:1, mps")


def _add_mmap_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mmap", action="store_true",
                   help="memory-map the vector index instead of reading it into memory (large indexes)")


def _reader_cfg(a: argparse.Namespace) -> ReaderCfg:
    return ReaderCfg(max_pixels=a.max_pixels, max_bytes=a.max_bytes)


def _backbone_cfg(a: argparse.Namespace) -> BackboneCfg:
    return BackboneCfg(name=a.backbone, device=a.device, pool=a.pool, compile=a.compile)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgembed", description="Local image similarity search.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="index (or update the index of) a folder of photos")
    p.add_argument("folder")
    _add_index_arg(p)
    _add_model_args(p)
    p.add_argument("--head", help="projection head from `imgembed train-head` (vectors become its dim)")
    _add_index_type_arg(p)
    p.add_argument("--dba", choices=DBA_MODES, default="",
                   help="database-side augmentation: store each photo's vector averaged with its 10 nearest "
                        "neighbours' (better class-level search; sticks until changed; default: as the index has it, "
                        "off for a new one)")
    p.add_argument("--wait", action="store_true", help="wait for another writer instead of failing")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--commit-every", type=int, default=IndexJobCfg.commit_every,
                   help="commit embedded vectors this often (a crash loses at most this many)")
    _add_ray_args(p)

    p = sub.add_parser("search", help="find the photos most similar to an image (or a text, with CLIP)")
    p.add_argument("query", help="an image file, or text with --text")
    _add_index_arg(p)
    p.add_argument("-k", type=int, default=10, help="number of results")
    p.add_argument("--text", action="store_true", help="QUERY is text (CLIP backbones)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--qe", action="store_true",
                   help="query expansion: fold the 10 best hits into the query and search again (scores are then "
                        "cosines to the expanded query)")
    _add_device_arg(p)
    _add_mmap_arg(p)

    p = sub.add_parser("info", help="what an index holds")
    _add_index_arg(p)
    p.add_argument("--json", action="store_true")
    _add_mmap_arg(p)

    p = sub.add_parser("eval", help="class-level retrieval quality (sub-folder names are labels)")
    p.add_argument("--gallery", required=True)
    p.add_argument("--queries", required=True)
    _add_model_args(p)
    p.add_argument("--head", action="append", help="compare raw, PCA, PCA-whitened and this projection head "
                   "(repeat for several heads)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--chart", help="with --head: also write the comparison as a PNG chart")
    p.add_argument("--no-rerank", action="store_true",
                   help="with --head: leave out the +DBA, +QE and +DBA+QE rows")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("train-head", help="train a projection head on the photos of a folder")
    p.add_argument("folder")
    p.add_argument("--out", required=True, help="head file to write (HEAD.safetensors, HEAD.json, HEAD.png)")
    p.add_argument("--dim", type=int, default=TrainCfg.dim, help="embedding dimension")
    p.add_argument("--labels", default=TrainCfg.labels, choices=LABEL_MODES,
                   help="folders: sub-folder names are classes; none: label-free (neighbourhood distillation, "
                        "kept only if it beats PCA)")
    p.add_argument("--val", help="validation folder for early stopping (default: hold out 10%% of FOLDER)")
    p.add_argument("--loss", default=TrainCfg.loss, choices=LOSSES)
    p.add_argument("--hidden", type=int, default=TrainCfg.hidden, help="0: linear head; N: add an MLP branch")
    p.add_argument("--epochs", type=int, default=TrainCfg.epochs, help="at most this many (early stopping)")
    p.add_argument("--seed", type=int, default=TrainCfg.seed)
    _add_model_args(p)
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("verify", help="check an index for consistency; --repair fixes it without re-embedding")
    _add_index_arg(p)
    p.add_argument("--repair", action="store_true", help="rebuild the vectors file from the stored vectors")
    p.add_argument("--drop-missing", action="store_true", help="with --repair: drop entries of vanished files")
    p.add_argument("--wait", action="store_true", help="wait for a running writer instead of failing")
    _add_build_index_parser(sub)
    return parser


def _tqdm_progress(enabled: bool):
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def update(stage: str, done: int, total: int) -> None:
        if not enabled:
            return
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="img", dynamic_ncols=True)
        bar.update(done - bar.n)

    def close() -> None:
        for bar in bars.values():
            bar.close()

    return update, close


def _job_cfg(a: argparse.Namespace) -> IndexJobCfg:
    return IndexJobCfg(backbone=_backbone_cfg(a), embed=EmbedCfg(batch_size=a.batch_size, workers=a.workers),
                       reader=_reader_cfg(a), index=IndexCfg(index_type=a.index_type, dba=getattr(a, "dba", "")),
                       head=a.head,
                       commit_every=a.commit_every)


def _print_summary(summary) -> None:
    """Skipped files on stderr (one line each), then the summary lines."""
    for path, reason in summary.skipped:
        say(f"skipped {path}: {reason}", err=True)
    for line in summary.lines():
        say(line)


def cmd_index(a: argparse.Namespace) -> int:
    from imgembed.indexer import index_folder

    if a.engine == "ray":
        return cmd_index_ray(a)
    if a.shards_out or a.shards_only or a.ray_address:
        raise ValueError("--shards-out, --shards-only and --ray-address go with --engine ray")

    update, close = _tqdm_progress(show_progress(a))
    try:
        summary = index_folder(a.folder, a.index, _job_cfg(a), progress=update, wait=a.wait)
    finally:
        close()
    _print_summary(summary)
    return 0 if summary.ok else 1


def cmd_search(a: argparse.Namespace) -> int:
    from imgembed.query.search import Searcher

    s = Searcher(a.index, device=a.device, mmap=a.mmap)
    s.require_photos()
    if not a.text and not os.path.lexists(a.query):
        raise FileNotFoundError(f"{a.query}: no such file; to search by a description, add --text "
                                "(it needs an index built with a CLIP backbone, open_clip:...)")
    if a.text:
        if not s.embedder.has_text:
            raise ValueError(f"backbone {s.snapshot.manifest['backbone']} has no text encoder; "
                             "text search needs an index built with a CLIP backbone (open_clip:...)")
        hits = s.search_text(a.query, a.k, qe=a.qe)
    else:
        hits = s.search_image_file(a.query, a.k, qe=a.qe)
    if a.json:
        print(json.dumps([{"path": h.path, "score": round(h.score, 6), "width": h.row.width,
                           "height": h.row.height} for h in hits], indent=2))
    else:
        for rank, h in enumerate(hits, 1):
            say(f"{rank:3d}  {h.score:.4f}  {h.path}")
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from imgembed.query.search import Searcher

    info = Searcher(a.index, mmap=a.mmap).info()
    if a.json:
        print(json.dumps(asdict(info), indent=2))
    else:
        for line in (f"index      {info.path}", f"images     {info.count}", f"dim        {info.dim}",
                     f"backbone   {info.backbone}", f"head       {info.head or 'none'}",
                     f"index type {info.index_type or 'empty'}" + (f" (nprobe {info.nprobe})" if info.nprobe else ""),
                     f"DBA        {info.dba}", f"metric     {info.metric}", f"generation {info.generation}",
                     f"on disk    {info.disk_bytes / 2**20:.1f} MiB"):
            say(line)
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from imgembed.learn.evaluate import metrics_row, project
    from imgembed.model.embedder import Embedder

    if a.head:
        return _eval_compare(a)
    embedder = Embedder.from_cfg(_backbone_cfg(a))
    data = _eval_features(a, embedder)
    m = metrics_row(a.backbone, project(embedder, data.q_feats), project(embedder, data.g_feats), data)
    name = f"{a.backbone} ({embedder.dim}-d)"
    say(f"{name}: {len(data.q_labels)} queries, {len(data.g_labels)} gallery")
    say(f"mAP {100 * m['mAP']:.1f} (95% interval {100 * m['mAP_lo']:.1f}-{100 * m['mAP_hi']:.1f})  "
        f"P@5 {100 * m['P@5']:.1f}  R@1 {100 * m['R@1']:.1f}  R@5 {100 * m['R@5']:.1f}  R@10 {100 * m['R@10']:.1f}")
    if a.json:
        m.update(n_queries=len(data.q_labels), n_gallery=len(data.g_labels))
        Path(a.json).write_text(json.dumps({"embedder": embedder.identity(), "metrics": m}, indent=2))
    return 0


def _eval_features(a: argparse.Namespace, embedder):
    """Raw features of the gallery and queries (cached), with a progress bar; skipped files listed."""
    from imgembed.learn.folders import load_features

    update, close = _tqdm_progress(show_progress(a))
    try:
        data = load_features(a.gallery, a.queries, embedder, _reader_cfg(a),
                             EmbedCfg(batch_size=a.batch_size, workers=a.workers),
                             progress=lambda d, t: update("features", d, t))
    finally:
        close()
    for path, reason in data.failures:
        say(f"skipped {path}: {reason}", err=True)
    return data


def _eval_compare(a: argparse.Namespace) -> int:
    from imgembed.learn.evaluate import compare, format_table, load_heads
    from imgembed.learn.head_files import other_collection
    from imgembed.learn.plots import plot_comparison
    from imgembed.model.backbones import create_backbone
    from imgembed.model.embedder import Embedder

    backbone = create_backbone(_backbone_cfg(a))
    heads = load_heads(a.head, backbone)
    data = _eval_features(a, Embedder(backbone, device=a.device, compile=a.compile))
    for path in a.head:
        warning = other_collection(path, data.g_feats)
        if warning:
            say(f"warning: {warning}", err=True)
    update, close = _tqdm_progress(show_progress(a))
    try:
        rows = compare(data, heads, rerank=not a.no_rerank, progress=lambda d, t: update("rows", d, t))
    finally:
        close()
    say(f"{len(data.q_labels)} queries ({a.queries}), {len(data.g_labels)} gallery ({a.gallery}), {a.backbone}")
    for line in format_table(rows).splitlines():
        say(line)
    if a.json:
        Path(a.json).write_text(json.dumps({"backbone": a.backbone, "gallery": a.gallery, "queries": a.queries,
                                            "heads": a.head, "rows": rows}, indent=2))
    if a.chart:
        plot_comparison(rows, a.chart)
    return 0


def cmd_train_head(a: argparse.Namespace) -> int:
    from tqdm import tqdm

    from imgembed.learn.folders import load_training_features
    from imgembed.learn.head_files import collection_record, save_trained_head
    from imgembed.learn.train import train_head
    from imgembed.model.embedder import Embedder

    cfg = TrainCfg(dim=a.dim, labels=a.labels, loss=a.loss, hidden=a.hidden, epochs=a.epochs, seed=a.seed)
    embedder = Embedder.from_cfg(_backbone_cfg(a))
    show = show_progress(a)
    update, close = _tqdm_progress(show)
    ecfg = EmbedCfg(batch_size=a.batch_size, workers=a.workers)
    try:
        x, y, failures = load_training_features(a.folder, a.labels, embedder, _reader_cfg(a), ecfg,
                                                lambda d, t: update("features", d, t))
        xv = yv = None
        if a.val:
            xv, yv, more = load_training_features(a.val, a.labels, embedder, _reader_cfg(a), ecfg,
                                                  lambda d, t: update("validation features", d, t))
            failures += more
    finally:
        close()
    for path, reason in failures:
        say(f"skipped {path}: {reason}", err=True)
    # label-free: one closed-form fit, scored against its PCA start (two steps)
    bar = tqdm(total=cfg.epochs if cfg.labels == "folders" else 1, desc="epochs" if cfg.labels == "folders" else "fit",
               unit="ep", disable=not show, dynamic_ncols=True)

    def on_epoch(rec: dict) -> None:
        bar.update(rec["epoch"] - bar.n)
        bar.set_postfix(val=f"{rec['val']:.4f}")

    try:
        result = train_head(x, y, cfg, xv, yv, embedder.backbone.spec, embedder.backbone.fingerprint, on_epoch)
    finally:
        bar.close()
    weights, png = save_trained_head(a.out, result, cfg, source=str(Path(a.folder).resolve()),
                                     collection=collection_record(a.folder, x))
    say(result.describe(cfg))
    say(f"wrote {weights}, {weights.with_suffix('.json')}, {png}")
    return 0


def cmd_verify(a: argparse.Namespace) -> int:
    from imgembed.index.verify import repair, verify

    report = repair(a.index, a.drop_missing, a.wait) if a.repair else verify(a.index)
    for line in report.lines():
        say(line)
    return 0 if report.ok else 1



# ---- scale-out: the Ray engine and building an index from embedding shards


def _add_ray_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scale-out (pip install 'imgembed[ray]')")
    g.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local (default): this process; ray: a Ray Data job writing embedding shards")
    g.add_argument("--ray-address", help="Ray cluster to join (default: $RAY_ADDRESS, else start a local one)")
    g.add_argument("--shards-out", help="with --engine ray: folder for the shards; run again to resume")
    g.add_argument("--shard-size", type=int, default=10_000, help="files per shard (the unit of resume)")
    g.add_argument("--shards-only", action="store_true", help="write the shards but do not build --index")


def _add_build_index_parser(sub) -> None:
    b = sub.add_parser("build-index", help="build an index from embedding shards (imgembed index --engine ray)")
    b.add_argument("--from-shards", required=True, metavar="DIR")
    _add_index_arg(b)
    _add_index_type_arg(b)
    b.add_argument("--wait", action="store_true", help="wait for another writer instead of failing")
    b.add_argument("--no-progress", action="store_true")


def cmd_index_ray(a: argparse.Namespace) -> int:
    from imgembed.distributed.ray_job import JobFailed, RayCfg, embed_to_shards

    if not a.shards_out:
        raise ValueError("--engine ray needs --shards-out DIR (where the embedding shards go)")
    update, close = _tqdm_progress(show_progress(a))
    try:
        summary = embed_to_shards(a.folder, a.shards_out, _job_cfg(a),
                                  RayCfg(address=a.ray_address, shard_size=a.shard_size, quiet=not a.verbose),
                                  progress=update)
    except JobFailed as e:
        say(f"error: {e}", err=True)
        return 1
    finally:
        close()
    _print_summary(summary)
    if a.shards_only:
        say(f"build the index with: imgembed build-index --from-shards {a.shards_out} --index {a.index}")
        return 0
    return _build_index(a.shards_out, a)


def cmd_build_index(a: argparse.Namespace) -> int:
    return _build_index(a.from_shards, a)


def _build_index(shards_dir: str, a: argparse.Namespace) -> int:
    """``--index`` from the shards in ``shards_dir`` (``--index-type``, ``--wait``, progress as asked)."""
    from imgembed.distributed.build_index import build_index

    update, close = _tqdm_progress(show_progress(a))
    try:
        summary = build_index(shards_dir, a.index, IndexCfg(index_type=a.index_type), progress=update, wait=a.wait)
    finally:
        close()
    for line in summary.lines():
        say(line)
    return 0


COMMANDS = {"index": cmd_index, "search": cmd_search, "info": cmd_info, "eval": cmd_eval,
            "verify": cmd_verify, "train-head": cmd_train_head, "build-index": cmd_build_index}


# Commands that write an index; an interruption of one of them says what became of it.
_WRITERS = ("index", "verify", "build-index")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 user error, 2 usage, 130 interrupted, 141 when
    the reader of the output went away, as for a program killed by SIGPIPE)."""
    command = None
    try:
        a = build_parser().parse_args(argv)
        command = a.command
        logging.basicConfig(level=logging.DEBUG if a.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
        errors = user_errors()
        try:
            rc = COMMANDS[a.command](a)
            sys.stdout.flush()  # here, not at exit, so that a closed pipe is seen below
            return rc
        except BrokenPipeError:
            raise
        except errors as e:
            say(f"error: {e}", err=True)
            return 1
    except KeyboardInterrupt:
        say("interrupted: the index still holds its last complete state, and the vectors computed so far "
            "are kept; run the same command again to finish" if command in _WRITERS else "interrupted", err=True)
        return 130
    except BrokenPipeError:  # `imgembed search ... | head -1`: the rest of the output is not wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())  # Python flushes stdout at exit: let that go nowhere
        except (OSError, ValueError):  # stdout is no file (a test's capture)
            pass
        os.close(devnull)
        return 141


if __name__ == "__main__":
    sys.exit(main())
