"""The GPU decode path's logic, run on the CPU: torchvision's CPU JPEG decoder stands in for nvJPEG,
and decoders that fail on purpose exercise the fallbacks."""

import io

import numpy as np
import pytest
import torch
from helpers import make_photo
from PIL import Image, ImageOps

from imgembed.config import ReaderCfg
from imgembed.ingest import gpu_decode
from imgembed.ingest.loader import iter_batches
from imgembed.ingest.preprocess import Preprocess
from imgembed.ingest.reader import ImageSkipped, decode_file

CPU = torch.device("cpu")
PRE = Preprocess(size=64, resize=72, interpolation="bicubic")


def jpeg_bytes(im: Image.Image, orientation: int = 1, **kw) -> bytes:
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    im.save(buf, "JPEG", quality=95, exif=exif.tobytes(), **kw)
    return buf.getvalue()


def cpu_decoder(datas, device):
    from torchvision.io import ImageReadMode, decode_jpeg

    return [decode_jpeg(d, mode=ImageReadMode.RGB) for d in datas]


def as_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_matches_pil_exif_transpose(orientation):
    im = make_photo(3, size=(40, 24))
    want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(jpeg_bytes(im, orientation)))))
    stored = torch.from_numpy(np.array(Image.open(io.BytesIO(jpeg_bytes(im, orientation))))).permute(2, 0, 1)
    got = gpu_decode.orient(stored, orientation).permute(1, 2, 0).numpy()
    assert got.shape == want.shape and np.array_equal(got, want)
    info = gpu_decode.probe(jpeg_bytes(im, orientation), ReaderCfg())
    assert info.orientation == orientation
    assert gpu_decode.shown_size(info) == (want.shape[1], want.shape[0])


def test_resize_crop_is_close_to_the_cpu_path():
    im = make_photo(5, size=(320, 240))
    cpu = decode_file_bytes(jpeg_bytes(im))
    img = cpu_decoder([as_tensor(jpeg_bytes(im))], CPU)[0]
    got = gpu_decode.resize_crop(img, PRE)
    assert got.shape == (3, 64, 64) and got.dtype == torch.uint8
    # different resamplers (PIL reducing_gap vs antialiased interpolate): close, not identical
    assert (got.float() - cpu.float()).abs().mean() < 6


def decode_file_bytes(data: bytes) -> torch.Tensor:
    return gpu_decode.cpu_decode(data, PRE, ReaderCfg(jpeg_draft=False))


def test_probe_routes_files():
    cfg = ReaderCfg()
    rgb = jpeg_bytes(make_photo(1))
    assert gpu_decode.probe(rgb, cfg) == gpu_decode.JpegInfo(96, 72, 1)
    assert gpu_decode.probe(jpeg_bytes(make_photo(1).convert("L")), cfg) is not None
    assert gpu_decode.probe(jpeg_bytes(make_photo(1).convert("CMYK")), cfg) is None  # PIL does CMYK
    png = io.BytesIO()
    make_photo(1).save(png, "PNG")
    assert gpu_decode.probe(png.getvalue(), cfg) is None
    assert gpu_decode.probe(rgb[:20], cfg) is None  # broken header: the CPU names the reason
    assert gpu_decode.probe(jpeg_bytes(make_photo(1, size=(400, 20))), cfg) is None  # strip: CPU
    with pytest.raises(ImageSkipped, match="max-pixels"):
        gpu_decode.probe(rgb, ReaderCfg(max_pixels=100))


def test_decode_many_falls_back_one_by_one():
    good = as_tensor(jpeg_bytes(make_photo(1)))
    bad = as_tensor(b"\xff\xd8\xff" + b"\0" * 50)
    calls = []

    def flaky(datas, device):
        calls.append(len(datas))
        if any(len(d) == len(bad) for d in datas):
            raise RuntimeError("nvjpeg: unsupported")
        return cpu_decoder(datas, device)

    out = gpu_decode.decode_many([good, bad, good], CPU, flaky)
    assert calls == [3, 1, 1, 1]  # the batch, then each alone
    assert out[1] is None and out[0].shape == out[2].shape == (3, 72, 96)


def test_finish_keeps_order_and_uses_the_cpu_for_what_the_gpu_refuses():
    photos = [make_photo(i, size=(120, 90)) for i in range(4)]
    datas = [jpeg_bytes(p) for p in photos]
    cmyk_like = datas[2]  # pretend nvJPEG cannot decode this one
    items = [gpu_decode.Pending(as_tensor(datas[0]), gpu_decode.JpegInfo(120, 90, 1)),
             decode_file_bytes(datas[1]),  # decoded by a worker on the CPU already
             gpu_decode.Pending(as_tensor(cmyk_like), gpu_decode.JpegInfo(120, 90, 1)),
             gpu_decode.Pending(as_tensor(b"\xff\xd8\xff broken"), gpu_decode.JpegInfo(120, 90, 1))]

    def decoder(datas_, device):
        out = []
        for d in datas_:
            if d.numel() == len(cmyk_like) and bytes(d.numpy()) == cmyk_like:
                raise RuntimeError("unsupported")
            out.append(cpu_decoder([d], device)[0])
        return out

    kept, pixels, failures = gpu_decode.finish(items, CPU, PRE, ReaderCfg(), decoder)
    assert kept == [0, 1, 2] and pixels.shape == (3, 3, 64, 64)
    assert [i for i, _ in failures] == [3] and "image" in failures[0][1]
    assert torch.equal(pixels[1], items[1])
    assert torch.equal(pixels[2], decode_file_bytes(cmyk_like)) or \
        (pixels[2].float() - decode_file_bytes(cmyk_like).float()).abs().mean() < 2


@pytest.mark.parametrize("workers", [0, 1])
def test_gpu_mode_of_the_loader_matches_the_cpu_mode(tmp_path, monkeypatch, workers):
    """The whole loader path with the GPU decoder swapped for the CPU one (with a worker process,
    the batch's JPEG bytes cross into the main process as one tensor)."""
    monkeypatch.setattr(gpu_decode, "_default_decoder", lambda: cpu_decoder)
    paths = []
    for i in range(7):
        p = tmp_path / f"{i}.jpg"
        p.write_bytes(jpeg_bytes(make_photo(i, size=(150, 110)), orientation=6 if i == 2 else 1))
        paths.append(p)
    png = tmp_path / "x.png"
    make_photo(9).save(png)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff not really")
    items = [(i, str(p).encode()) for i, p in enumerate(paths + [png, tmp_path / "bad.jpg"])]
    cfg = ReaderCfg(jpeg_draft=False)
    cpu = list(iter_batches(items, PRE, cfg, batch_size=4, workers=0))
    gpu = list(iter_batches(items, PRE, cfg, batch_size=4, workers=workers, gpu_device=CPU))
    flat = lambda bs, f: [x for b in bs for x in getattr(b, f)]  # noqa: E731
    assert flat(gpu, "keys") == flat(cpu, "keys") == list(range(8))
    assert flat(gpu, "sizes") == flat(cpu, "sizes") and flat(gpu, "sizes")[2] == (110, 150)
    assert flat(gpu, "digests") == flat(cpu, "digests")
    assert [k for b in gpu for k, _ in b.failures] == [8]
    a = torch.cat([b.pixels for b in gpu if b.keys]).float()
    b = torch.cat([b.pixels for b in cpu if b.keys]).float()
    assert (a - b).abs().mean() < 6
    d = decode_file(str(paths[2]).encode(), PRE, cfg)
    assert (gpu[0].pixels[2].float() - d.pixels.float()).abs().mean() < 6  # rotated the same way


def test_gpu_decode_needs_cuda():
    assert not gpu_decode.gpu_decode_available(CPU)


def test_indexing_on_the_gpu_path_caps_the_batch_and_matches_the_cpu_path(tmp_path, monkeypatch):
    """The indexer's GPU branch: nvJPEG (stand-in) decoding, the batch cut by the memory cap."""
    from helpers import TINY, write_photos

    from imgembed import indexer
    from imgembed.config import BackboneCfg, IndexJobCfg
    from imgembed.index.snapshot import Snapshot
    from imgembed.model import pipeline

    write_photos(tmp_path / "p", 10)
    cfg = IndexJobCfg(backbone=BackboneCfg(name=TINY))
    cfg.embed.workers = 0
    indexer.index_folder(tmp_path / "p", tmp_path / "cpu", cfg)

    monkeypatch.setattr(gpu_decode, "_default_decoder", lambda: cpu_decoder)
    monkeypatch.setattr(pipeline, "gpu_decode_available", lambda device: True)
    caps, sizes = [], []
    monkeypatch.setattr(pipeline, "raw_batch_cap", lambda mean, workers: caps.append(mean) or 3)
    real = pipeline.iter_batches
    monkeypatch.setattr(pipeline, "iter_batches",
                        lambda items, pre, c, bs, *a, **k: sizes.append((bs, k.get("gpu_device")))
                        or real(items, pre, c, bs, *a, **k))
    s = indexer.index_folder(tmp_path / "p", tmp_path / "gpu", cfg)
    files = sorted((tmp_path / "p").glob("*.jpg"))
    assert s.indexed == 10 and not s.skipped
    assert caps == [pytest.approx(sum(f.stat().st_size for f in files) / 10)]
    assert sizes == [(3, CPU)]  # 32 cut to 3; decoded on the "GPU" path
    cpu_snap, gpu_snap = Snapshot(tmp_path / "cpu"), Snapshot(tmp_path / "gpu")
    by_path = lambda snap: {r.relpath: r.id for r in snap.iter_rows()}  # noqa: E731
    a, b = by_path(cpu_snap), by_path(gpu_snap)
    assert a.keys() == b.keys()
    va, vb = cpu_snap.vectors(a.values()), gpu_snap.vectors(b.values())
    cos = [float(va[a[k]] @ vb[b[k]]) for k in a]
    assert min(cos) > 0.99, cos
