"""Static int8 quantisation of the default backbone on the CPU: speed against fp32, and closeness.

    pip install torchao      # PyTorch 2 export quantisation (X86InductorQuantizer) lives there
    python scripts/bench_int8.py [FOLDER] [--photos 128] [--calibrate 64] [--batch 32]

FOLDER (default: the clothing-small test photos) gives real photos: the first ``--calibrate`` of
them calibrate the int8 model, the next ``--photos`` are measured. Prints images/s of the backbone
alone on ready batches (eager fp32, as ``imgembed index`` runs below 5,000 photos; fp32 compiled
with inductor; int8 compiled with inductor), and the cosine of the int8 features (GeM-pooled, as
indexed) to fp32 ones on the measured photos.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

DEFAULT = Path("/work/shared/data/clothing-small/test")


def speed(fn, x, seconds: float = 5.0) -> float:
    fn(x)
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        fn(x)
        n += len(x)
    return n / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", nargs="?", type=Path, default=DEFAULT)
    p.add_argument("--photos", type=int, default=128)
    p.add_argument("--calibrate", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    a = p.parse_args(argv)

    import numpy as np
    import torch
    import torch._inductor.config as inductor_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    from imgembed.config import BackboneCfg, ReaderCfg
    from imgembed.ingest import fs
    from imgembed.ingest.loader import iter_batches
    from imgembed.model.backbones import gem
    from imgembed.model.embedder import Embedder

    emb = Embedder.from_cfg(BackboneCfg(), compile="off")
    reader = ReaderCfg()
    items = list(fs.iter_image_paths(a.folder, reader))[: a.calibrate + a.photos]
    pixels = torch.cat([b.pixels for b in iter_batches(items, emb.preprocess, reader, 32, 0)])
    x = ((pixels.float() - emb._mean) / emb._std).contiguous(memory_format=torch.channels_last)
    calib, test = x[: a.calibrate], x[a.calibrate:]
    print(f"{len(calib)} calibration and {len(test)} measured photos from {a.folder}; batch {a.batch}; "
          f"{torch.get_num_threads()} threads; load {os.getloadavg()[0]:.2f}", flush=True)

    class Features(torch.nn.Module):  # forward_features as a module of its own, for export
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net.forward_features(x)

    net = emb.backbone.net.eval()
    feats = Features(net).eval()
    with torch.no_grad():
        ref = torch.cat([gem(net.forward_features(test[i:i + 32])) for i in range(0, len(test), 32)])
        batch = test[: a.batch]
        eager = speed(net.forward_features, batch)
        print(f"fp32 eager      {eager:7.1f} images/s  (load {os.getloadavg()[0]:.2f})", flush=True)

        inductor_config.freezing = True
        t = time.perf_counter()
        fp32c = torch.compile(net.forward_features)
        fp32c(batch)
        print(f"  (fp32 compiled in {time.perf_counter() - t:.0f} s)", flush=True)
        fp32_speed = speed(fp32c, batch)
        print(f"fp32 compiled   {fp32_speed:7.1f} images/s  {fp32_speed / eager:.2f}x eager  "
              f"(load {os.getloadavg()[0]:.2f})", flush=True)

        t = time.perf_counter()
        exported = torch.export.export(feats, (batch,)).module()
        quantizer = xiq.X86InductorQuantizer()
        quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(exported, quantizer)
        for i in range(0, len(calib), a.batch):
            prepared(calib[i:i + a.batch])
        q = convert_pt2e(prepared)
        int8c = torch.compile(q)
        int8c(batch)
        print(f"  (int8 calibrated and compiled in {time.perf_counter() - t:.0f} s)", flush=True)
        int8_speed = speed(int8c, batch)
        print(f"int8 compiled   {int8_speed:7.1f} images/s  {int8_speed / eager:.2f}x eager, "
              f"{int8_speed / fp32_speed:.2f}x fp32 compiled  (load {os.getloadavg()[0]:.2f})", flush=True)

        got = []
        for i in range(0, len(test), a.batch):
            chunk = test[i:i + a.batch]
            n = len(chunk)
            if n < a.batch:  # the compiled model was made for full batches
                chunk = torch.cat([chunk, chunk[:1].expand(a.batch - n, -1, -1, -1)])
            got.append(gem(int8c(chunk))[:n])
        got = torch.cat(got)
    cos = torch.nn.functional.cosine_similarity(ref, got, dim=1).numpy()
    print(f"cosine int8 vs fp32 (GeM features, {len(cos)} photos): mean {cos.mean():.5f}, "
          f"min {cos.min():.5f}, 5th percentile {np.percentile(cos, 5):.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
