"""Command line: ``imgembed index | search | similar | duplicates | info | export | serve | eval | verify |
train-head``. Parses, calls the library, prints."""

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
    DUPLICATE_PRESETS,
    INDEX_TYPES,
    LABEL_MODES,
    LOSSES,
    POOLS,
    PROJECTION_MODES,
    RUNTIMES,
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
    from imgembed.errors import BackboneError, HeadError, ImageSkipped

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
    p.add_argument("--runtime", default=BackboneCfg.runtime, choices=RUNTIMES,
                   help="what runs the model on a CPU: auto (ONNX Runtime for the default backbone and "
                        "torchvision CNNs, 1.5-3x torch's speed with the same vectors; torch for the others), "
                        "torch, onnx")
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


def _add_qe_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--qe", action="store_true",
                   help="query expansion: fold the 10 best hits into the query and search again (scores are then "
                        "cosines to the expanded query)")


def _add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--csv", metavar="FILE", help="also write the results to FILE as CSV")


def _add_filter_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("filters (combinable; the k best photos among those that match)")
    g.add_argument("--under", metavar="FOLDER", help="only photos under FOLDER (a path, or a folder inside the index)")
    g.add_argument("--after", metavar="DATE", help="taken on or after DATE (2023, 2023-06, 2023-06-01, ...)")
    g.add_argument("--before", metavar="DATE", help="taken before DATE")
    g.add_argument("--camera", metavar="TEXT", help="camera make or model contains TEXT (any case)")
    g.add_argument("--min-width", type=int, metavar="N", help="at least N pixels wide")
    g.add_argument("--ext", metavar="LIST", help="only these file types, e.g. jpg,heic")


def _filters(a: argparse.Namespace):
    from imgembed.index.filters import Filters

    under = a.under
    if under and not os.path.isabs(under) and os.path.isdir(under):  # a folder seen from here
        under = os.path.realpath(under)
    return Filters(under=under, after=a.after, before=a.before, camera=a.camera, min_width=a.min_width,
                   ext=a.ext or ())


def _reader_cfg(a: argparse.Namespace) -> ReaderCfg:
    return ReaderCfg(max_pixels=a.max_pixels, max_bytes=a.max_bytes)


def _backbone_cfg(a: argparse.Namespace) -> BackboneCfg:
    return BackboneCfg(name=a.backbone, device=a.device, pool=a.pool, compile=a.compile, runtime=a.runtime)


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
    p.add_argument("--projection", choices=PROJECTION_MODES, default="",
                   help="auto: once the collection holds 1,000 photos, fit a 128-d projection on its own "
                        "features (no labels) and store every vector through it; off: keep the model's features "
                        "(default: as the index has it; auto for a new index without --head and without a "
                        "text-capable backbone)")
    p.add_argument("--wait", action="store_true", help="wait for another writer instead of failing")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--commit-every", type=int, default=IndexJobCfg.commit_every,
                   help="commit embedded vectors this often (a crash loses at most this many)")
    _add_ray_args(p)

    p = sub.add_parser("search", help="find the photos most similar to images (or texts, with CLIP)")
    p.add_argument("query", nargs="*", help="image files or folders of them, or texts with --text")
    _add_index_arg(p)
    p.add_argument("-k", type=int, default=10, help="number of results per query")
    p.add_argument("--text", action="store_true", help="each QUERY is a text (CLIP backbones)")
    p.add_argument("--from-list", metavar="FILE", help="also every query in FILE, one per line (- reads stdin)")
    _add_qe_arg(p)
    _add_output_args(p)
    _add_filter_args(p)
    _add_device_arg(p)
    _add_mmap_arg(p)

    p = sub.add_parser("similar", help="one shot: the photos of FOLDER most like PHOTO (keeps FOLDER's index in "
                                       "the cache, updated each time)")
    p.add_argument("photo", nargs="?", help="an image file (or, with --text, leave it out)")
    p.add_argument("folder", nargs="?", default=".", help="the folder to search (default: the current one)")
    p.add_argument("--text", metavar="TEXT", help="describe the photo instead (needs a CLIP --backbone)")
    p.add_argument("-k", type=int, default=10, help="number of results")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help="efficientnet-lite0 (default), open_clip:ARCH:WEIGHTS")
    _add_qe_arg(p)
    _add_output_args(p)
    _add_filter_args(p)
    _add_device_arg(p)
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("export", help="write every photo's metadata and vector: OUT.parquet, OUT.csv or OUT.npy")
    p.add_argument("out", help=".parquet (metadata + vectors), .csv (metadata) or .npy (vectors, + .csv beside it)")
    _add_index_arg(p)
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("serve", help="an HTTP API over an index (pip install 'imgembed[serve]')")
    _add_index_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token-file", help="file holding the bearer token every request must carry "
                                        "(or set $IMGEMBED_TOKEN); needed to listen beyond localhost")
    p.add_argument("--no-token", action="store_true", help="listen beyond localhost without a token (a trusted network)")
    _add_device_arg(p)

    p = sub.add_parser("info", help="what an index holds")
    _add_index_arg(p)
    p.add_argument("--json", action="store_true")
    _add_mmap_arg(p)

    p = sub.add_parser("duplicates", help="groups of copies of the same photo, with a suggested keeper")
    _add_index_arg(p)
    how = p.add_mutually_exclusive_group()
    how.add_argument("--preset", default="copies", choices=DUPLICATE_PRESETS,
                     help="exact: same pixels; copies (default): edited copies of one photo (resized, re-encoded, "
                          "cropped, flipped, rotated, recoloured, overlaid); similar: also near-identical scenes")
    how.add_argument("--threshold", type=float, help="instead: group photos whose embeddings are at least this "
                     "similar (cosine), copies or not")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the groups as JSON")
    out.add_argument("--csv", metavar="FILE", help="also write one row per member to this CSV file")
    p.add_argument("--no-progress", action="store_true")

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
    p.add_argument("--views", type=int, default=TrainCfg.views,
                   help="--labels none: augmented views of each photo the head learns to map to the photo "
                        "(each costs one more backbone pass over FOLDER, cached); 0: none")
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
                       reader=_reader_cfg(a), index=IndexCfg(index_type=a.index_type, dba=getattr(a, "dba", ""),
                                                       projection=getattr(a, "projection", "")),
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
    from imgembed.api import open_index
    from imgembed.query.batch import expand

    if not a.query and not a.from_list:
        raise ValueError("give a query: an image file, a folder of them, --from-list FILE, or a text with --text")
    queries = expand(a.query, a.from_list, a.text)
    if not queries:
        raise ValueError(f"no query images in {', '.join(a.query) or a.from_list}")
    ix = open_index(a.index, device=a.device, mmap=a.mmap)
    ix.searcher.require_photos()
    if not a.text and a.from_list is None and len(a.query) == 1 and not os.path.lexists(a.query[0]):
        raise FileNotFoundError(f"{a.query[0]}: no such file; to search by a description, add --text "
                                "(it needs an index built with a CLIP backbone, open_clip:...)")
    filters = _filters(a)
    grouped = len(queries) > 1 or a.from_list is not None or not a.text and any(os.path.isdir(q) for q in a.query)
    if len(queries) == 1 and not grouped:  # one query: any kind the Python API takes (text, image file)
        from imgembed.query.batch import Answer

        q = queries[0]
        hits = ix.text(q, a.k, filters, qe=a.qe) if a.text else ix.search(Path(q), a.k, filters, qe=a.qe)
        answers = [Answer(q, hits)]
    else:
        answers = list(ix.search_many(queries, a.k, filters, text=a.text, qe=a.qe))
    return _print_answers(answers, a, grouped)


def _print_answers(answers: list, a: argparse.Namespace, grouped: bool) -> int:
    """Results as text or JSON (one list per query when ``grouped``), and as CSV with --csv."""
    failed = [x for x in answers if x.error]
    for x in failed:
        say(f"skipped query {x.query}: {x.error}", err=True)
    if a.csv:
        from imgembed.query.export import write_hits_csv

        write_hits_csv(a.csv, answers)
    if a.json:
        if grouped:
            out = [{"query": x.query, **({"error": x.error} if x.error else {}),
                    "results": [h.as_dict() for h in x.hits]} for x in answers]
        else:
            out = [h.as_dict() for h in answers[0].hits]
        print(json.dumps(out, indent=2))
    else:
        for n, x in enumerate(answers):
            if grouped:
                if n:
                    say("")
                say(f"query {x.query}" + (f": skipped ({x.error})" if x.error else ""))
            _print_hits(x.hits)
    if failed and len(failed) == len(answers):
        return 1
    if failed:
        say(f"{len(answers) - len(failed)} of {len(answers)} queries answered; {len(failed)} skipped", err=True)
    return 0


def _print_hits(hits: list) -> None:
    """``rank  score  date  camera  path``; a date from the file's mtime (no EXIF capture time) has a ~."""
    cams = [h.camera or "-" for h in hits]
    width = max((len(c) for c in cams), default=1)
    for rank, (h, cam) in enumerate(zip(hits, cams), 1):
        date = "-" if not h.taken else ("~" if h.meta.taken_from == "mtime" else " ") + h.taken[:10]
        say(f"{rank:3d}  {h.score:.4f}  {date:>11s}  {cam:<{width}s}  {h.path}")


def cmd_similar(a: argparse.Namespace) -> int:
    from imgembed.api import open_folder
    from imgembed.query.batch import Answer

    if a.text is None and a.photo is None:
        raise ValueError("give a PHOTO, or describe one with --text")
    if a.text is not None and a.photo is not None:
        a.photo, a.folder = None, a.photo if a.folder == "." else a.folder  # `similar --text T FOLDER`
    if a.photo is not None and not os.path.isfile(a.photo):
        raise FileNotFoundError(f"no such photo: {a.photo}")
    update, close = _tqdm_progress(show_progress(a))
    try:
        ix, summary = open_folder(a.folder, a.backbone, a.device, progress=update)
    finally:
        close()
    for path, reason in summary.skipped:
        say(f"skipped {path}: {reason}", err=True)
    say(f"{summary.lines()[0]} ({ix.path})", err=True)
    filters = _filters(a)
    hits = (ix.text(a.text, a.k, filters, qe=a.qe) if a.text is not None
            else ix.similar(a.photo, a.k, filters, qe=a.qe))
    return _print_answers([Answer(a.text if a.text is not None else a.photo, hits)], a, grouped=False)


def cmd_export(a: argparse.Namespace) -> int:
    from tqdm import tqdm

    from imgembed.api import open_index

    ix = open_index(a.index)
    bar = tqdm(total=ix.info().count, desc="export", unit="img", disable=not show_progress(a), dynamic_ncols=True)
    try:
        summary = ix.export(a.out, progress=lambda done, total: bar.update(done - bar.n))
    finally:
        bar.close()
    for line in summary.lines():
        say(line)
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from imgembed.serve.http_api import ServeCfg, serve

    token = None
    if a.token_file:
        token = Path(a.token_file).read_text().strip()
        if not token:
            raise ValueError(f"{a.token_file} is empty; put the bearer token in it")
    token = token or os.environ.get("IMGEMBED_TOKEN") or None
    serve(ServeCfg(index=a.index, host=a.host, port=a.port, token=token, allow_no_token=a.no_token, device=a.device))
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
                     f"projection {info.projection}", f"DBA        {info.dba}", f"metric     {info.metric}",
                     f"generation {info.generation}",
                     f"on disk    {info.disk_bytes / 2**20:.1f} MiB"):
            say(line)
    return 0


def cmd_duplicates(a: argparse.Namespace) -> int:
    from imgembed.index.snapshot import Snapshot
    from imgembed.query.copies import find_duplicates
    from imgembed.query.duplicate_export import report_csv, report_dict, shown

    if a.threshold is not None and not -1.0 <= a.threshold <= 1.0:
        raise ValueError(f"--threshold is a cosine similarity between -1 and 1, got {a.threshold}")
    update, close = _tqdm_progress(show_progress(a))
    try:
        report = find_duplicates(Snapshot(a.index), preset=a.preset, threshold=a.threshold, progress=update)
    finally:
        close()
    if a.csv:
        Path(a.csv).write_text(report_csv(report))
    if a.json:
        print(json.dumps(report_dict(report), indent=2))
        return 0
    for n, g in enumerate(report.groups, 1):
        say(f"group {n}: {len(g.members)} photos, {g.kind}; keep {shown(g.keeper.row.path)} ({g.reason})")
        for m in g.members:
            mark = "keep" if m.row.id == g.keeper.row.id else "    "
            say(f"  {mark}  {m.score:6.3f}  {m.row.size / 1024:8.0f} KiB  {m.row.width:>5}x{m.row.height:<5}  "
                f"{m.kind:<15}  {shown(m.row.path)}  ({m.evidence})")
    print(report.summary())
    if report.stats.get("missing copy data"):
        say(f"{report.stats['missing copy data']} photos have no copy-detection data yet: run imgembed index on "
            "their folders (nothing is embedded again)", err=True)
    if report.stats.get("pairs not checked by pixels"):
        say(f"{report.stats['pairs not checked by pixels']} keypoint matches could not be checked pixel by pixel "
            "(a file cannot be read now) and are listed on their keypoints alone", err=True)
    if a.csv:
        say(f"wrote {a.csv}")
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
    data = _eval_features(a, Embedder(backbone, device=a.device, compile=a.compile, runtime=a.runtime))
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

    if a.views < 0:
        raise ValueError(f"--views must be 0 or more, got {a.views}")
    cfg = TrainCfg(dim=a.dim, labels=a.labels, loss=a.loss, hidden=a.hidden, epochs=a.epochs, seed=a.seed,
                   views=a.views)
    embedder = Embedder.from_cfg(_backbone_cfg(a))
    show = show_progress(a)
    update, close = _tqdm_progress(show)
    ecfg = EmbedCfg(batch_size=a.batch_size, workers=a.workers)
    try:
        x, y, failures, views = load_training_features(a.folder, a.labels, embedder, _reader_cfg(a), ecfg, update,
                                                       views=cfg.views if cfg.labels == "none" else 0)
        xv = yv = None
        if a.val:
            xv, yv, more, _ = load_training_features(a.val, a.labels, embedder, _reader_cfg(a), ecfg,
                                                     lambda what, d, t: update(f"validation {what}", d, t))
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
        result = train_head(x, y, cfg, xv, yv, embedder.backbone.spec, embedder.backbone.fingerprint, on_epoch,
                            views=views)
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


COMMANDS = {"index": cmd_index, "search": cmd_search, "similar": cmd_similar, "duplicates": cmd_duplicates,
            "info": cmd_info, "export": cmd_export, "serve": cmd_serve, "eval": cmd_eval, "verify": cmd_verify,
            "train-head": cmd_train_head, "build-index": cmd_build_index}


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
