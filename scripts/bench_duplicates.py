"""How well `imgembed duplicates` finds copies, side by side with imagededup's hashes and PDQ.

    python scripts/bench_duplicates.py FOLDER [--originals 300] [--distractors 1000] [--work DIR]
           [--compare-python ~/.cache/imgembed-bench-venv/bin/python] [--sheet false-pairs.png]

Takes a seeded sample of FOLDER's photos (the class of a photo is its parent folder's name): the
originals, each copied with every edit of imgembed.ingest.edits (resize 30-50% at JPEG quality
50-75, crops keeping 80% and 60% of each side, flip, rotate 90, brightness/contrast, greyscale, a
text banner over 15% of the height, black padding, PNG re-save, byte copy), and distractors: other
photos of the same folder, so of the same classes. Everything is indexed with the default backbone
and grouped by each preset.

Scores are over groups, as a user sees them: every pair of files in one group is a predicted pair;
it is true when both come from the same original. Recall per edit is the share of originals found
in one group with their edited copy. The target recall averages resize, crop80, flip, rot90,
colour, grey, png and bytes. imagededup's hashes (64 bits) and PDQ (256 bits; also with its 8
flips and rotations) run on the same files from their own virtualenv (scripts/dedup_baselines.py
says how to make it), grouped the same way at their default threshold and at the loosest
threshold whose precision is at least imgembed's `copies` preset's. The top false pairs of the
`copies` preset are drawn on a contact sheet, so that real duplicates inside the source data are
seen rather than counted. imagededup's CNN needs downloaded weights and is not run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from imgembed.config import EmbedCfg, IndexJobCfg, ReaderCfg
from imgembed.index.snapshot import Snapshot
from imgembed.indexer import index_folder
from imgembed.ingest.edits import EDITS, make_copy
from imgembed.ingest.reader import open_image
from imgembed.query.copies import PRESETS, find_duplicates

TARGET = ["resize", "crop80", "flip", "rot90", "colour", "grey", "png", "bytes"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
IMAGEDEDUP_DEFAULT = 10  # imagededup's max_distance_threshold default (of 64 bits)
PDQ_DEFAULT = 31  # the match threshold PDQ's authors suggest (of 256 bits)


def build(folder: Path, work: Path, n_orig: int, n_dis: int, seed: int) -> list[dict]:
    """The benchmark folder under ``work/photos`` and its truth (built once, then reused)."""
    truth = work / "truth.json"
    if truth.is_file():
        meta = json.loads(truth.read_text())
        if meta["args"] == [str(folder), n_orig, n_dis, seed]:
            return meta["files"]
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(files))[: n_orig + n_dis]
    out = []
    for k, i in enumerate(pick.tolist()):
        src, data = files[i], files[i].read_bytes()
        role = "original" if k < n_orig else "distractor"
        rel = Path("originals" if k < n_orig else "distractors") / src.parent.name / f"{k:05d}{src.suffix.lower()}"
        (work / "photos" / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / "photos" / rel).write_bytes(data)
        out.append({"path": str(rel), "source": k, "cls": src.parent.name, "edit": role, "src": str(src)})
        if role == "original":
            im = open_image(data, ReaderCfg(), None)
            for e in EDITS:
                copy, suffix = make_copy(e, im, data, rng)
                rel = Path("copies") / e / f"{k:05d}{suffix or src.suffix.lower()}"
                (work / "photos" / rel).parent.mkdir(parents=True, exist_ok=True)
                (work / "photos" / rel).write_bytes(copy)
                out.append({"path": str(rel), "source": k, "cls": src.parent.name, "edit": e, "src": str(src)})
    truth.write_text(json.dumps({"args": [str(folder), n_orig, n_dis, seed], "files": out}))
    return out


def groups_of(n: int, edges) -> np.ndarray:
    parent = np.arange(n)

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[rb] = ra
    return np.array([find(i) for i in range(n)])


def score(meta: list[dict], group: np.ndarray) -> dict:
    src = np.array([m["source"] for m in meta])
    cls = np.array([m["cls"] for m in meta])
    members = defaultdict(list)
    for i, g in enumerate(group.tolist()):
        members[g].append(i)
    tp = fp = fp_same = 0
    false_pairs = []
    for m in members.values():
        if len(m) < 2:
            continue
        m = np.array(m)
        same = src[m][:, None] == src[m][None, :]
        iu = np.triu_indices(len(m), 1)
        tp += int(same[iu].sum())
        bad = ~same[iu]
        fp += int(bad.sum())
        fp_same += int((bad & (cls[m][:, None] == cls[m][None, :])[iu]).sum())
        false_pairs += [(int(m[a]), int(m[b])) for a, b in zip(iu[0][bad], iu[1][bad])]
    orig = {m["source"]: i for i, m in enumerate(meta) if m["edit"] == "original"}
    recall = {e: float(np.mean([group[i] == group[orig[m["source"]]] for i, m in enumerate(meta) if m["edit"] == e]))
              for e in EDITS}
    return {"precision": tp / max(tp + fp, 1), "target": float(np.mean([recall[e] for e in TARGET])),
            "recall": recall, "false": fp, "same_class": fp_same, "false_pairs": false_pairs}


def row(name: str, s: dict) -> str:
    return (f"| {name} | {s['precision']:.3f} | {s['target']:.3f} | "
            + " | ".join(f"{s['recall'][e]:.2f}" for e in EDITS) + f" | {s['false']} | {s['same_class']} |")


HEADER = ("| method | precision | target recall | " + " | ".join(EDITS) + " | false pairs | same-class false |\n"
          "| --- | --- | --- | " + " | ".join("---" for _ in EDITS) + " | --- | --- |")


def hamming(codes: np.ndarray, dihedral: bool) -> np.ndarray:
    """``(n, n)`` distances; ``codes (n, bytes)`` or ``(n, 8, bytes)`` (dihedral: the nearest variant)."""
    if codes.ndim == 2:
        codes = codes[:, None]
    words = codes.view(np.uint64) if codes.shape[-1] % 8 == 0 else codes
    base = words[:, 0]
    best = None
    for v in range(codes.shape[1] if dihedral else 1):
        d = np.zeros((len(codes), len(codes)), np.int32)
        for s in range(0, len(codes), 500):
            d[s:s + 500] = np.bitwise_count(words[s:s + 500, v][:, None, :] ^ base[None]).sum(-1)
        best = d if best is None else np.minimum(best, d)
    return np.minimum(best, best.T)


def sweep(meta, dist: np.ndarray, thresholds, floor: float) -> tuple[dict, int]:
    """The loosest threshold whose precision stays at least ``floor``, and its scores."""
    best, at = None, -1
    iu = np.triu_indices(len(dist), 1)
    for t in thresholds:
        keep = dist[iu] <= t
        s = score(meta, groups_of(len(dist), zip(iu[0][keep], iu[1][keep])))
        if s["precision"] < floor:
            break
        best, at = s, t
    return best, at


def at_threshold(meta, dist: np.ndarray, t: int) -> dict:
    iu = np.triu_indices(len(dist), 1)
    keep = dist[iu] <= t
    return score(meta, groups_of(len(dist), zip(iu[0][keep], iu[1][keep])))


def contact_sheet(meta, photos: Path, pairs, out: Path, n: int = 16, cell: int = 160) -> None:
    seen, chosen = set(), []
    for a, b in pairs:  # one picture per pair of source photos
        key = frozenset((meta[a]["source"], meta[b]["source"]))
        if key not in seen:
            seen.add(key)
            chosen.append((a, b))
    chosen = chosen[:n]
    cols = 4
    rows = max(1, (len(chosen) + cols - 1) // cols)
    sheet = Image.new("RGB", (cols * 2 * cell, rows * (cell + 28)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (a, b) in enumerate(chosen):
        x, y = (k % cols) * 2 * cell, (k // cols) * (cell + 28)
        for s, i in enumerate((a, b)):
            with Image.open(photos / meta[i]["path"]) as im:
                im = im.convert("RGB")
                im.thumbnail((cell - 6, cell - 6))
                sheet.paste(im, (x + s * cell + 3, y + 3))
            draw.text((x + s * cell + 3, y + cell), f"{meta[i]['cls']} {meta[i]['edit']}", fill="black")
        draw.text((x + 3, y + cell + 13), Path(meta[a]["src"]).name[:16] + " / " + Path(meta[b]["src"]).name[:16],
                  fill="grey")
    sheet.save(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder")
    p.add_argument("--originals", type=int, default=300)
    p.add_argument("--distractors", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", help="folder for the copies and the index (default: /tmp/bench-duplicates-NAME)")
    p.add_argument("--compare-python", default=str(Path.home() / ".cache/imgembed-bench-venv/bin/python"),
                   help="python of a virtualenv with imagededup and pdqhash (see scripts/dedup_baselines.py)")
    p.add_argument("--sheet", help="contact sheet of the top false pairs (default: WORK/false-pairs.png)")
    a = p.parse_args()
    folder = Path(a.folder).resolve()
    work = Path(a.work or f"/tmp/bench-duplicates-{folder.name}")
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    meta = build(folder, work, a.originals, a.distractors, a.seed)
    photos = work / "photos"
    print(f"{folder}: {a.originals} originals x {len(EDITS)} edits + {a.distractors} distractors = {len(meta)} files "
          f"({time.perf_counter() - t0:.0f} s to make)")
    t0 = time.perf_counter()
    summary = index_folder(photos, work / "index", IndexJobCfg(embed=EmbedCfg(workers=2)))
    print(" ".join(summary.lines()[:1]), f"({time.perf_counter() - t0:.0f} s to index)")
    pos = {m["path"]: i for i, m in enumerate(meta)}
    snap = Snapshot(work / "index")
    results = {}
    print(HEADER)
    for preset in PRESETS:
        report = find_duplicates(snap, preset)
        edges = []
        for g in report.groups:
            ms = [pos[m.row.relpath.decode()] for m in g.members if m.row.relpath.decode() in pos]
            edges += [(ms[0], x) for x in ms[1:]]
        results[preset] = s = score(meta, groups_of(len(meta), edges))
        print(row(f"imgembed {preset} ({report.seconds:.0f} s)", s))
    baseline_rows(meta, photos, work, a.compare_python, results["copies"]["precision"])
    sheet = Path(a.sheet or work / "false-pairs.png")
    false = results["copies"]["false_pairs"]
    contact_sheet(meta, photos, false, sheet)
    print(f"contact sheet of the copies preset's false pairs ({len(false)} pairs): {sheet}")
    links = defaultdict(int)  # pairs of source photos behind the false pairs (a photo stored twice shows up here)
    for x, y in false:
        links[" / ".join(sorted(Path(meta[i]["src"]).name for i in (x, y)))] += 1
    for link, n in sorted(links.items(), key=lambda kv: -kv[1]):
        print(f"  {n:4d} false pairs between copies of {link}")
    return 0


def baseline_rows(meta, photos: Path, work: Path, python: str, floor: float) -> None:
    if not Path(python).exists():
        print(f"(no comparison: {python} is missing; scripts/dedup_baselines.py says how to make it)")
        return
    out = work / "baselines.npz"
    if not out.is_file():
        listing = work / "files.txt"
        listing.write_text("\n".join(str(photos / m["path"]) for m in meta) + "\n")
        script = Path(__file__).resolve().parent / "dedup_baselines.py"
        subprocess.run([python, str(script), str(listing), str(out)], check=True)
    data = np.load(out)
    floor = min(floor, 0.99)
    for name in ("phash", "dhash", "whash", "ahash"):
        d = hamming(data[name], dihedral=False)
        print(row(f"imagededup {name} <= {IMAGEDEDUP_DEFAULT} (default)", at_threshold(meta, d, IMAGEDEDUP_DEFAULT)))
        s, t = sweep(meta, d, range(0, 33), floor)
        print(row(f"imagededup {name} <= {t} (loosest at precision >= {floor:.3f})", s) if s
              else f"| imagededup {name}: no threshold reaches precision {floor:.3f} (distance 0 already groups others) |")
    for dihedral in (False, True):
        d = hamming(data["pdq"], dihedral=dihedral)
        label = "PDQ" + (" dihedral" if dihedral else "")
        print(row(f"{label} <= {PDQ_DEFAULT} (default)", at_threshold(meta, d, PDQ_DEFAULT)))
        s, t = sweep(meta, d, range(0, 129, 2), floor)
        print(row(f"{label} <= {t} (loosest at precision >= {floor:.3f})", s) if s
              else f"| {label}: no threshold reaches precision {floor:.3f} |")
    secs = dict(zip(data["names"].tolist(), data["seconds"].tolist()))
    print("hashing time, s for all files: " + ", ".join(f"{k} {v:.0f}" for k, v in secs.items()))


if __name__ == "__main__":
    sys.exit(main())
