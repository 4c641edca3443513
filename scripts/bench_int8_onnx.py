"""Static int8 quantisation of the default backbone with ONNX Runtime: speed, closeness, and the files
that `imgembed eval` measures.

    python scripts/bench_int8_onnx.py [OUT] [--calibrate-from FOLDER] [--calibrate 128] [--photos 128]
                                      [--float-ends] [--calibration minmax|percentile|entropy] [--name lite0-int8]
    imgembed eval --backbone onnx:OUT/lite0-int8.onnx --gallery G --queries Q     # then, per dev set

Writes OUT/lite0-fp32.onnx (the export queries use, imgembed.model.onnx_export) and
OUT/NAME.onnx: QDQ int8, weights per channel, activations calibrated (min-max by default) on the first
``--calibrate`` photos of ``--calibrate-from`` (default: the clothing-small train photos; the
measured photos are the next ``--photos``). Prints images/s of the backbone alone on ready batches of
32 (torch eager fp32 channels-last, as ``imgembed index`` runs below 5,000 photos; ONNX Runtime
fp32; ONNX Runtime int8), and the cosine of each model's features (GeM-pooled, as indexed) to torch's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

DEFAULT = Path("/work/shared/data/clothing-small/train")


def speed(fn, x, seconds: float = 6.0) -> float:
    fn(x)
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        fn(x)
        n += len(x)
    return n / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", nargs="?", type=Path, default=Path("/tmp/imgembed-int8"))
    p.add_argument("--calibrate-from", type=Path, default=DEFAULT)
    p.add_argument("--calibrate", type=int, default=128)
    p.add_argument("--photos", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--float-ends", action="store_true",
                   help="keep the first and the last convolution in float (the stem, and the features GeM pools)")
    p.add_argument("--calibration", default="minmax", choices=["minmax", "percentile", "entropy"])
    p.add_argument("--name", default="lite0-int8", help="file name of the int8 model in OUT")
    a = p.parse_args(argv)

    import numpy as np
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from imgembed.config import BackboneCfg, ReaderCfg
    from imgembed.ingest import fs
    from imgembed.ingest.loader import iter_batches
    from imgembed.model.backbones import create_backbone
    from imgembed.model.onnx_export import identity_of, to_onnx

    backbone = create_backbone(BackboneCfg())
    reader = ReaderCfg()
    items = list(fs.iter_image_paths(a.calibrate_from, reader))
    items = [items[i] for i in np.random.default_rng(0).permutation(len(items))[: a.calibrate + a.photos]]
    pixels = torch.cat([b.pixels for b in iter_batches(items, backbone.preprocess, reader, 32, 0)])
    mean = torch.tensor(backbone.preprocess.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(backbone.preprocess.std).view(1, 3, 1, 1) * 255
    x = ((pixels.float() - mean) / std).contiguous()
    calib, test = x[: a.calibrate].numpy(), x[a.calibrate:]
    print(f"{len(calib)} calibration and {len(test)} measured photos from {a.calibrate_from}; batch {a.batch}; "
          f"{torch.get_num_threads()} threads; load {os.getloadavg()[0]:.2f}", flush=True)

    a.out.mkdir(parents=True, exist_ok=True)
    fp32, int8 = a.out / "lite0-fp32.onnx", a.out / f"{a.name}.onnx"
    info = identity_of(backbone)
    fp32.write_bytes(to_onnx(backbone))

    class Calib(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"pixels": calib[i:i + 16]} for i in range(0, len(calib), 16)])

        def get_next(self):
            return next(self.batches, None)

    import onnx

    convs = [n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "Conv"]
    keep = [convs[0], convs[-1]] if a.float_ends else []
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[a.calibration]
    t = time.perf_counter()
    quantize_static(str(fp32), str(int8), Calib(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=keep,
                    calibrate_method=method)
    print(f"quantised in {time.perf_counter() - t:.1f} s ({a.calibration} calibration; kept in float: "
          f"{', '.join(keep) or 'nothing'})", flush=True)
    for path in (fp32, int8):
        path.with_suffix(".json").write_text(json.dumps({**info, "source": "scripts/bench_int8_onnx.py"}, indent=2))

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sessions = {name: ort.InferenceSession(str(f), opts, providers=["CPUExecutionProvider"])
                for name, f in (("ONNX Runtime fp32", fp32), ("ONNX Runtime int8", int8))}
    batch = test[: a.batch]
    with torch.inference_mode():
        ref = torch.cat([backbone(test[i:i + 32]) for i in range(0, len(test), 32)]).numpy()
        nhwc = backbone.to(memory_format=torch.channels_last)  # as imgembed.model.embedder runs a CNN
        eager = speed(lambda b: nhwc(b), batch.contiguous(memory_format=torch.channels_last))
    print(f"{'torch eager fp32':20s} {eager:7.1f} img/s (channels-last, as indexed)")
    for name, s in sessions.items():
        got = np.concatenate([s.run(None, {"pixels": test[i:i + 32].numpy()})[0] for i in range(0, len(test), 32)])
        cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
        rate = speed(lambda b, s=s: s.run(None, {"pixels": b}), batch.numpy())
        print(f"{name:20s} {rate:7.1f} img/s ({rate / eager:.2f}x eager)  cosine to torch: mean {cos.mean():.5f}, "
              f"min {cos.min():.5f}, 5th percentile {np.percentile(cos, 5):.5f}", flush=True)
    print(f"load {os.getloadavg()[0]:.2f}; now: imgembed eval --backbone onnx:{int8} --gallery G --queries Q")
    return 0


if __name__ == "__main__":
    sys.exit(main())
