"""Checking an index for consistency, and repairing what can be repaired without re-embedding.

Checks: the manifest is valid; SQLite passes its integrity check; the FAISS file of the published
generation exists, has the manifest's dimension, holds exactly as many vectors as there are visible
rows and exactly their ids, and for a sample of them the very vectors stored in SQLite; every live
row has a stored vector of the right size, and every stored vector is finite; recorded files still
exist. Leftovers of an interrupted run (unpublished rows and files) are reported as notes:
they are expected after a crash and the next ``index`` run uses or removes them.

Repair takes the write lock and publishes a new generation whose FAISS file is rebuilt from the
vectors stored in SQLite. Rows that have no usable vector are dropped (the next ``index`` run embeds
those files again); rows of vanished files are dropped only when asked (``drop_missing``), since a
folder on an unplugged drive looks vanished too; vanished files are a warning, not a failure.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from imgembed.config import IndexCfg
from imgembed.index import faiss_index
from imgembed.index import format as index_format
from imgembed.index.format import DB, StoreError, faiss_name
from imgembed.index.store import StoreWriter

logger = logging.getLogger(__name__)

ERROR, MISSING, NOTE = "error", "warning", "note"
_SHOW = 5  # paths listed per finding


@dataclass
class Finding:
    level: str  # ERROR: the index is inconsistent; MISSING: recorded files are gone; NOTE: expected state
    what: str
    repairable: bool = False


@dataclass
class VerifyReport:
    index: str
    generation: int = 0
    faiss_count: int = 0
    rows: int = 0  # rows visible in the published generation
    findings: list[Finding] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """The index is consistent. Files deleted since the last run are a warning, not a failure:
        the next index run drops them (and a folder on an unplugged drive looks the same)."""
        return not any(f.level == ERROR for f in self.findings)

    def lines(self) -> list[str]:
        out = [f"index {self.index}: generation {self.generation}, {self.faiss_count} vectors, {self.rows} entries"]
        out += [f"repaired: {r}" for r in self.repaired]
        for f in self.findings:
            hint = " (imgembed verify --repair fixes it)" if f.repairable and f.level == ERROR else ""
            out.append(f"{f.level}: {f.what}{hint}")
        out.append("ok" if self.ok else "FAILED")
        return out


class _Moved(Exception):
    """A writer published a newer generation (and removed the old file) while we checked."""


def verify(index_dir: str | Path, check_files: bool = True) -> VerifyReport:
    """Check the index at ``index_dir``; never changes it. Safe while a writer runs."""
    for _ in range(5):
        try:
            return _verify(Path(index_dir), check_files)
        except _Moved:
            continue
    return _verify(Path(index_dir), check_files)


def _verify(index_dir: Path, check_files: bool) -> VerifyReport:
    rep = VerifyReport(str(index_dir))
    try:
        manifest = index_format.read_manifest(index_dir)
    except StoreError as e:
        rep.findings.append(Finding(ERROR, str(e)))
        return rep
    if not (index_dir / DB).is_file():
        rep.findings.append(Finding(ERROR, f"no {DB} beside the manifest; rebuild the index"))
        return rep
    try:
        con = index_format.connect(index_dir, readonly=True)
    except StoreError as e:
        rep.findings.append(Finding(ERROR, str(e)))
        return rep
    try:
        con.execute("BEGIN")  # one consistent view while a writer may be running
        _check_db(con, index_dir, int(manifest["dim"]), rep, check_files)
        con.execute("COMMIT")
    except sqlite3.DatabaseError as e:
        rep.findings.append(Finding(ERROR, str(index_format.damaged(index_dir / DB, e))))
    except ValueError as e:
        rep.findings.append(Finding(ERROR, f"{index_dir / DB} cannot be read: {e}; rebuild the index"))
    finally:
        con.close()
    return rep


def _check_db(con: sqlite3.Connection, index_dir: Path, dim: int, rep: VerifyReport, check_files: bool) -> None:
    check = [r[0] for r in con.execute("PRAGMA quick_check")]
    if check != ["ok"]:
        rep.findings.append(Finding(ERROR, str(index_format.damaged(index_dir / DB, "; ".join(check[:3])))))
        return
    version = con.execute("PRAGMA user_version").fetchone()[0]
    if version > len(index_format.MIGRATIONS):
        rep.findings.append(Finding(ERROR, f"schema version {version} is newer than this imgembed; upgrade it"))
        return
    gen = rep.generation = int(index_format.read_meta(con, "generation") or 0)
    visible = index_format.visible(str(gen))
    ids = np.fromiter((r[0] for r in con.execute(f"SELECT id FROM files WHERE {visible} ORDER BY id")), np.int64)
    rep.rows = len(ids)

    live = f"(removed_gen IS NULL OR removed_gen > {gen})"
    no_vec = con.execute(f"SELECT count(*) FROM files f WHERE {live} AND NOT EXISTS "
                         "(SELECT 1 FROM vectors v WHERE v.hash = f.hash)").fetchone()[0]
    if no_vec:
        rep.findings.append(Finding(ERROR, f"{no_vec} entries have no stored vector", True))
    bad_vec, n_vec = con.execute("SELECT sum(length(vec) != ?), count(*) FROM vectors", (4 * dim,)).fetchone()
    if bad_vec:
        # When none fits, the manifest's dim is what is wrong: deleting every vector repairs nothing.
        rep.findings.append(Finding(ERROR, f"{bad_vec} of {n_vec} stored vectors are not {dim}-d"
                                           + ("" if bad_vec < n_vec else " (was the manifest edited?)"),
                                    bad_vec < n_vec))
    if nan := _non_finite(con, dim):
        rep.findings.append(Finding(ERROR, f"{nan} stored vectors are not finite (NaN or infinity); searches "
                                           "miss them", True))

    _check_faiss(con, index_dir, dim, gen, ids, rep)

    orphans = con.execute("SELECT count(*) FROM vectors WHERE hash NOT IN "
                          f"(SELECT hash FROM files WHERE {live})").fetchone()[0]
    if orphans:
        rep.findings.append(Finding(NOTE, f"{orphans} stored vectors belong to no entry; --repair deletes them"))
    pending = con.execute(f"SELECT count(*) FROM files WHERE added_gen > {gen} AND removed_gen IS NULL").fetchone()[0]
    if pending:
        rep.findings.append(Finding(NOTE, f"{pending} entries committed by an unfinished run are not published "
                                          "yet; the next index run publishes them"))
    strays = sorted(p.name for p in index_dir.iterdir()
                    if (p.name.startswith("vectors.") and p.name.endswith(".faiss") and p.name != faiss_name(gen))
                    or (p.name.startswith(".") and p.name.endswith(".tmp")))
    if con.execute("SELECT 1 FROM sqlite_master WHERE name='scratch'").fetchone():
        recorded = {r[0] for r in con.execute("SELECT name FROM scratch")}
    else:  # an index from before the scratch table: its next writer adopts these
        recorded = set(strays)
    leftovers = [n for n in strays if n in recorded]
    unknown = [n for n in strays if n not in recorded]
    if leftovers:
        rep.findings.append(Finding(NOTE, f"files left by an interrupted run: {', '.join(leftovers[:_SHOW])}; "
                                          "the next index run (or --repair) removes them"))
    if unknown:
        rep.findings.append(Finding(NOTE, f"files imgembed did not make: {', '.join(unknown[:_SHOW])}; imgembed "
                                          "never deletes them (move them out of the index folder)"))
    if check_files:
        _check_files(con, visible, rep)


def _check_faiss(con, index_dir: Path, dim: int, gen: int, ids: np.ndarray, rep: VerifyReport) -> None:
    if gen == 0:
        if len(ids):
            rep.findings.append(Finding(ERROR, f"{len(ids)} entries visible before anything was published", True))
        return
    path = index_dir / faiss_name(gen)
    if not path.is_file():
        _raise_if_moved(index_dir, gen)
        rep.findings.append(Finding(ERROR, f"{path.name}, the published vectors, is missing", True))
        return
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as e:
        _raise_if_moved(index_dir, gen)
        rep.findings.append(Finding(ERROR, f"{path.name} cannot be read ({str(e).splitlines()[0]})", True))
        return
    rep.faiss_count = int(index.ntotal)
    if index.d != dim:  # the stored vectors are checked against the manifest on their own
        rep.findings.append(Finding(ERROR, f"{path.name} holds {index.d}-d vectors but the manifest says {dim}",
                                    True))
        return
    if index.ntotal != len(ids):
        rep.findings.append(Finding(ERROR, f"{path.name} holds {index.ntotal} vectors but {len(ids)} entries "
                                           "are visible", True))
    try:
        stored = faiss_index.ids_of(index)
    except (ValueError, RuntimeError) as e:
        rep.findings.append(Finding(ERROR, f"{path.name}: cannot list its ids ({e})", True))
        return
    uniq = np.unique(stored)
    if len(uniq) != len(stored):
        rep.findings.append(Finding(ERROR, f"{path.name} holds {len(stored) - len(uniq)} duplicate ids", True))
    extra, lost = np.setdiff1d(uniq, ids), np.setdiff1d(ids, uniq)
    if len(extra) or len(lost):
        rep.findings.append(Finding(ERROR, f"{path.name} and the metadata disagree: {len(extra)} ids without an "
                                           f"entry, {len(lost)} entries without a vector", True))
    kind = index_format.read_meta(con, "index_type")
    try:
        actual = faiss_index.kind_of(index)
    except ValueError as e:
        rep.findings.append(Finding(ERROR, f"{path.name}: {e}", True))
        return
    if not len(extra) and not len(lost):
        _compare_sample(con, index, path.name, dim, ids, actual, rep)
    if kind != actual:
        rep.findings.append(Finding(NOTE, f"metadata says index type {kind!r}, {path.name} is {actual!r}; "
                                          "the next publish rebuilds it"))


def _non_finite(con: sqlite3.Connection, dim: int, chunk: int = 10_000) -> int:
    """How many stored vectors of the right size hold NaN or infinity (all of them are read)."""
    cur = con.execute("SELECT vec FROM vectors WHERE length(vec) = ?", (4 * dim,))
    bad = 0
    while rows := cur.fetchmany(chunk):
        vecs = np.frombuffer(b"".join(r[0] for r in rows), dtype=np.float32).reshape(len(rows), dim)
        bad += int((~np.isfinite(vecs).all(axis=1)).sum())
    return bad


# Entries whose FAISS vector is compared with the one stored in SQLite.
SAMPLE = 256
# IVF-PQ keeps codes, not vectors: a decoded vector only resembles its original (cosine above this).
_PQ_MIN_COSINE = 0.5


def _compare_sample(con, index, name: str, dim: int, ids: np.ndarray, kind: str, rep: VerifyReport) -> None:
    """The vectors FAISS holds for a sample of ids are those stored in SQLite (same ids and count
    prove nothing if the vectors were replaced)."""
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(ids, size=min(SAMPLE, len(ids)), replace=False)) if len(ids) else ids
    rows = dict(index_format.select_in(con, "SELECT f.id, v.vec FROM files f JOIN vectors v ON v.hash = f.hash "
                                            "WHERE f.id IN ({marks}) AND length(v.vec) = " + str(4 * dim),
                                       (int(i) for i in sample)))
    stored = {i: np.frombuffer(rows[i], dtype=np.float32) for i in sample.tolist() if i in rows}
    have = [i for i, v in stored.items() if np.isfinite(v).all()]  # non-finite ones: reported already
    if not have:
        return
    stored = np.stack([stored[i] for i in have])  # (n, dim)
    try:
        held = faiss_index.reconstruct(index, np.array(have, dtype=np.int64))  # (n, dim)
    except (RuntimeError, ValueError) as e:
        rep.findings.append(Finding(ERROR, f"{name}: cannot read its vectors back ({str(e).splitlines()[0]})", True))
        return
    if kind == "ivfpq":
        cos = (held * stored).sum(axis=1) / np.maximum(
            np.linalg.norm(held, axis=1) * np.linalg.norm(stored, axis=1), 1e-12)
        bad = int((~(cos > _PQ_MIN_COSINE)).sum())
    else:
        bad = int((~np.isclose(held, stored, atol=1e-5).all(axis=1)).sum())
    if bad:
        rep.findings.append(Finding(ERROR, f"{bad} of {len(have)} sampled vectors in {name} are not the ones stored "
                                           "in the metadata", True))


def _raise_if_moved(index_dir: Path, gen: int) -> None:
    con = index_format.connect(index_dir, readonly=True)
    try:
        if int(index_format.read_meta(con, "generation") or 0) != gen:
            raise _Moved
    finally:
        con.close()


def _check_files(con: sqlite3.Connection, visible: str, rep: VerifyReport) -> None:
    missing: list[bytes] = []
    roots_gone: set[bytes] = set()
    sql = f"SELECT r.path, f.relpath FROM files f JOIN roots r ON r.id = f.root_id WHERE {visible}"
    for root, rel in con.execute(sql):
        if not os.path.exists(os.path.join(root, rel)):
            missing.append(os.path.join(root, rel))
            if not os.path.isdir(root):
                roots_gone.add(root)
    if missing:
        shown = ", ".join(p.decode("utf-8", "replace") for p in missing[:_SHOW])
        more = f" and {len(missing) - _SHOW} more" if len(missing) > _SHOW else ""
        why = (f"; folder {', '.join(r.decode('utf-8', 'replace') for r in sorted(roots_gone))} is missing "
               "(an unplugged drive?)" if roots_gone else "")
        rep.findings.append(Finding(MISSING, f"{len(missing)} recorded files no longer exist: {shown}{more}{why}. "
                                             "Run imgembed index on their folder, or verify --repair --drop-missing",
                                    True))


def repair(index_dir: str | Path, drop_missing: bool = False, wait: bool = False) -> VerifyReport:
    """Repair the index without re-embedding; returns a fresh verification with what was done.

    Raises:
        StoreError: another process is writing the index (pass ``wait``), or the index is beyond
            repair (no valid manifest, damaged database): rebuild it with ``imgembed index``.
    """
    before = verify(index_dir, check_files=drop_missing)
    if any(f.level == ERROR and not f.repairable for f in before.findings):
        raise StoreError("cannot repair: " + "; ".join(f.what for f in before.findings if f.level == ERROR))
    done: list[str] = []
    with StoreWriter(index_dir, None, IndexCfg(), wait=wait) as w:  # its start removes leftover files
        gen = w.published
        if n := w.drop_wrong_size_vectors():
            done.append(f"deleted {n} vectors of the wrong size")
        if n := w.drop_non_finite_vectors():
            done.append(f"deleted {n} vectors that were not finite")
        if n := w.drop_rows_without_vectors():
            done.append(f"dropped {n} entries without a vector (the next index run embeds them)")
        if drop_missing and (n := w.drop_missing_files()):
            done.append(f"dropped {n} entries of files that no longer exist")
        if done or any(f.level == ERROR for f in before.findings):
            stats = w.publish(rebuild=True)
            done.append(f"rebuilt {faiss_name(stats.generation)} from the stored vectors "
                        f"({stats.total} vectors, was generation {gen})")
            w.purge_orphans()
    after = verify(index_dir)
    after.repaired = done or ["nothing needed repair"]
    return after
