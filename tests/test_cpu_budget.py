"""The CPU share: cores from the affinity mask and quota, threads and workers split among the free
ones, passive OpenMP waiting set before torch loads, and freed activations kept in the process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import TINY, write_photos

from imgembed.config import BackboneCfg, EmbedCfg, ReaderCfg
from imgembed.ingest import cpu
from imgembed.model import pipeline
from imgembed.model.embedder import Embedder

ROOT = Path(__file__).resolve().parent.parent


def run_py(code: str, **env: str) -> str:
    e = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    e.update(env, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e,
                          check=True).stdout.strip()


@pytest.mark.parametrize(("cores", "busy", "want"), [
    (2, 0.0, (2, 2, 2)),  # idle: a thread and a worker per core
    (2, 0.3, (2, 2, 2)),  # a little background work takes no core
    (2, 1.0, (1, 1, 1)),  # one core taken by another program
    (2, 0.6, (1, 1, 1)),
    (2, 7.0, (1, 1, 1)),  # never less than one
    (16, 3.2, (13, 13, 13)),
    (1, 0.0, (1, 1, 1)),
])
def test_budget_splits_the_free_cores(cores, busy, want):
    b = cpu.budget(cores=cores, busy=busy)
    assert (b.threads, b.workers, b.free) == want
    assert b.cores == cores


def test_budget_keeps_the_users_worker_count_and_gives_a_gpu_model_one_thread():
    assert cpu.budget(cores=4, busy=0.0, workers=0).workers == 0
    assert cpu.budget(cores=4, busy=2.0, workers=6).workers == 6
    gpu = cpu.budget(cores=4, busy=1.0, model_on_cpu=False)
    assert (gpu.threads, gpu.workers) == (1, 3)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no affinity masks here")
def test_usable_cores_follow_the_affinity_mask():
    first = min(os.sched_getaffinity(0))
    code = (f"import os; os.sched_setaffinity(0, {{{first}}}); from imgembed.ingest import cpu; "
            "print(cpu.usable_cores(), cpu.budget().threads)")
    assert run_py(code) == "1 1"


def test_a_cgroup_quota_caps_the_cores(tmp_path):
    f = tmp_path / "cpu.max"
    f.write_text("150000 100000\n")
    assert cpu._cgroup_quota(str(f)) == 1.5
    f.write_text("max 100000\n")
    assert cpu._cgroup_quota(str(f)) is None
    assert cpu._cgroup_quota(str(tmp_path / "missing")) is None


def test_openmp_waits_passively_and_is_told_before_torch_loads():
    code = ("import os, sys; import imgembed.config; t = 'torch' in sys.modules; "
            "from imgembed.model.embedder import Embedder; print(t, os.environ['OMP_WAIT_POLICY'])")
    assert run_py(code) == "False PASSIVE"
    assert run_py(code, OMP_WAIT_POLICY="ACTIVE") == "False ACTIVE"  # the user's choice stays


FAULTS = """
import ctypes, resource, sys
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
if sys.argv[1] == "keep":
    from imgembed.ingest.cpu import keep_freed_memory
    assert keep_freed_memory()

def activation():  # 64 MB allocated, written, freed: an activation's life
    p = libc.malloc(64 << 20)
    libc.memset(p, 1, 64 << 20)
    libc.free(p)

activation()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    activation()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                    reason="glibc's allocator")
def test_freed_large_blocks_are_kept_instead_of_faulted_in_again(tmp_path):
    script = tmp_path / "faults.py"
    script.write_text(FAULTS)
    env = {k: v for k, v in os.environ.items()} | {"PYTHONPATH": str(ROOT)}

    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, env=env, check=True)
        return int(out.stdout)

    fresh, kept = faults("plain"), faults("keep")
    assert fresh > 10 * 16_384 * 0.5  # 16,384 pages a block, mapped anew each time (fewer with huge pages)
    assert kept < fresh / 20


def test_building_an_embedder_keeps_freed_memory(monkeypatch):
    calls = []
    monkeypatch.setattr("imgembed.model.embedder.keep_freed_memory", lambda: calls.append(1))
    Embedder.from_cfg(BackboneCfg(name=TINY))
    assert calls


def test_embedding_runs_on_the_budgeted_threads_and_restores_them(tmp_path, monkeypatch):
    write_photos(tmp_path / "p", 6)
    items = [(p.name, str(p).encode()) for p in sorted((tmp_path / "p").iterdir())]
    emb = Embedder.from_cfg(BackboneCfg(name=TINY))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu, "budget", lambda **kw: cpu.Budget(threads=1, workers=0, cores=4, free=1))
    torch.set_num_threads(2)
    seen = [torch.get_num_threads() for _ in pipeline.embed_files(items, emb, ReaderCfg(), EmbedCfg(batch_size=2))]
    assert seen == [1, 1, 1]
    assert torch.get_num_threads() == 2

    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's setting wins
    seen = [torch.get_num_threads() for _ in pipeline.embed_files(items, emb, ReaderCfg(), EmbedCfg(batch_size=2))]
    assert seen == [2, 2, 2]


def test_an_onnx_runtime_model_runs_on_the_budgeted_threads(tmp_path, monkeypatch):
    from imgembed.model.backbones.tiny import TinyCNN

    monkeypatch.setattr(TinyCNN, "exportable", True)
    write_photos(tmp_path / "p", 4)
    items = [(p.name, str(p).encode()) for p in sorted((tmp_path / "p").iterdir())]
    emb = Embedder.from_cfg(BackboneCfg(name=TINY, device="cpu"))
    assert emb.onnx is not None
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu, "budget", lambda **kw: cpu.Budget(threads=1, workers=0, cores=4, free=1))
    seen = [emb.onnx.session.get_session_options().intra_op_num_threads
            for _ in pipeline.embed_files(items, emb, ReaderCfg(), EmbedCfg(batch_size=2))]
    assert seen == [1, 1]


def test_a_process_answering_queries_builds_models_on_its_query_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu, "_answering", False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert cpu.query_threads() == 4
    torch.set_num_threads(2)
    cpu.use_query_threads()  # torch is loaded here: set now
    assert torch.get_num_threads() == 4 and cpu.answering_queries()
    torch.set_num_threads(2)
    Embedder.from_cfg(BackboneCfg(name=TINY, runtime="torch"))  # and again for a model built later
    assert torch.get_num_threads() == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu.query_threads() == 3
    torch.set_num_threads(2)


SPIN = "import time\nt = time.time()\nwhile time.time() - t < {s}: pass\n"


def test_own_cpu_time_counts_the_live_children():
    before = cpu._own_ticks()
    child = subprocess.Popen([sys.executable, "-c", SPIN.format(s=1.5) + "time.sleep(5)"])
    try:
        time.sleep(2.5)  # the child has spun 1.5 s and sleeps, alive
        assert cpu._own_ticks() - before >= 100  # clock ticks (100 a second): 1.5 s of the child
    finally:
        child.kill()
        child.wait()


def test_the_watch_sees_other_programs_and_not_this_one():
    watch = cpu.CoreWatch()
    # a process that is not our child (its parent exits at once): another program
    subprocess.run(["sh", "-c", f"{sys.executable} -c '{SPIN.format(s=1.5)}' &"], check=True)
    time.sleep(1.2)
    assert watch.others_busy() >= 0.6
    time.sleep(0.5)
    watch.others_busy()
    busy0, total0 = cpu._cpu_times(watch.cpus)
    exec(SPIN.format(s=1.0))  # this process keeps a core busy itself
    busy1, total1 = cpu._cpu_times(watch.cpus)
    everyone = len(watch.cpus) * (busy1 - busy0) / (total1 - total0)
    assert everyone - watch.others_busy() >= 0.7  # our own core is not counted as another program's


def test_an_old_window_of_the_cores_is_started_afresh(monkeypatch):
    slept = []
    monkeypatch.setattr(cpu.time, "sleep", slept.append)
    cpu._WATCH.others_busy()
    monkeypatch.setattr(cpu._WATCH, "since", cpu.time.monotonic() - 60)  # the window spans a minute
    cpu.busy_cores(seconds=0.2)
    assert slept and slept[-1] > 0.15  # watched anew rather than judged on the old minute
    slept.clear()
    monkeypatch.setattr(cpu._WATCH, "since", cpu.time.monotonic() - 3)  # recent and long enough
    cpu.busy_cores(seconds=0.2)
    assert slept == []
