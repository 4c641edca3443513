#!/usr/bin/env bash
# All GPU measurements of the indexing pipeline in one run (a few minutes on one GPU).
#
#   bash scripts/gpu_check.sh [PYTHON]
#
# Makes its own photo folders from assets/photos (no network, no /work/shared needed):
# 640x480 JPEGs and 12 MP JPEGs; saves a random-init open_clip ViT-B-32 as a local weights file.
# Then, with the model on the GPU (bf16 autocast, nvJPEG decode, pinned memory):
#   1. unit tests of the GPU decode path, now on a real GPU (nvJPEG instead of the CPU stand-in)
#   2. GPU decode vs CPU decode: pixel difference and embedding cosine on the same photos
#   3. bench_pipeline on 640x480 and on 12 MP: decode-only, model-only, end-to-end, ceiling =
#      min(decode, model), end-to-end / ceiling, and bf16/fp16 vs fp32 cosine
# Targets (issue 5): ViT-B-32 end-to-end >= 7,000 images/s at 640x480, >= 450 at 12 MP.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
WORK=${GPU_CHECK_DIR:-$(mktemp -d)}
N_VGA=${N_VGA:-4096}
N_12MP=${N_12MP:-512}
BATCH=${BATCH:-0}  # 0: the batch size imgembed picks from free GPU memory
echo "== machine"; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true; nproc

echo "== photo folders in $WORK"
"$PY" - "$WORK" "$N_VGA" "$N_12MP" <<'EOF'
import sys, os, glob
from concurrent.futures import ProcessPoolExecutor
from PIL import Image
work, n_vga, n_12 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
src = sorted(glob.glob("assets/photos/*/*.jpg"))
os.makedirs(f"{work}/vga", exist_ok=True); os.makedirs(f"{work}/12mp", exist_ok=True)
def one(i):
    im = Image.open(src[i % len(src)]).convert("RGB")
    if i % 2:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)  # distinct content per file
    if i < n_vga:
        im.resize((640, 480), Image.BICUBIC).save(f"{work}/vga/{i:06d}.jpg", quality=90)
    if i < n_12:
        im.resize((4000, 3000), Image.BICUBIC).save(f"{work}/12mp/{i:06d}.jpg", quality=90)
with ProcessPoolExecutor() as ex:
    list(ex.map(one, range(max(n_vga, n_12)), chunksize=32))
import torch, open_clip
torch.manual_seed(0)
torch.save(open_clip.create_model("ViT-B-32").state_dict(), f"{work}/vitb32.pt")
print(len(os.listdir(f"{work}/vga")), "x 640x480,", len(os.listdir(f"{work}/12mp")), "x 12 MP")
EOF

echo "== 1. GPU decode unit tests"
"$PY" -m pytest -q -p no:cacheprovider tests/test_gpu_decode.py 2>&1 | tail -2

echo "== 2. GPU decode vs CPU decode (same photos, same model)"
"$PY" - "$WORK" <<'EOF'
import sys, glob, os, torch, numpy as np
from imgembed.ingest import gpu_decode
from imgembed.config import BackboneCfg, ReaderCfg
from imgembed.model.embedder import Embedder
from imgembed.ingest.loader import iter_batches
work = sys.argv[1]
emb = Embedder.from_cfg(BackboneCfg(name="efficientnet-lite0", device="cuda"))
for folder in ("vga", "12mp"):
    paths = sorted(glob.glob(f"{work}/{folder}/*.jpg"))[:64]
    items = [(i, os.fsencode(p)) for i, p in enumerate(paths)]
    cpu = torch.cat([b.pixels for b in iter_batches(items, emb.preprocess, ReaderCfg(), 32, 4)]).cuda()
    gpu = torch.cat([b.pixels for b in iter_batches(items, emb.preprocess, ReaderCfg(), 32, 4,
                                                    gpu_device=torch.device("cuda"))])
    cos = np.sum(emb.embed(cpu) * emb.embed(gpu), axis=1)
    print(f"{folder}: mean |pixel diff| {(cpu.float() - gpu.float()).abs().mean():.2f}; "
          f"EfficientNet-Lite0 cosine GPU-decoded vs CPU-decoded mean {cos.mean():.4f} min {cos.min():.4f}")
EOF

echo "== 3. pipeline, ViT-B-32 on 640x480"
"$PY" scripts/bench_pipeline.py "$WORK/vga" --backbone "open_clip:ViT-B-32:$WORK/vitb32.pt" --device cuda \
    --batch-size "$BATCH" --repeat 2 --precision-check
echo "== 3. pipeline, ViT-B-32 on 12 MP"
"$PY" scripts/bench_pipeline.py "$WORK/12mp" --backbone "open_clip:ViT-B-32:$WORK/vitb32.pt" --device cuda \
    --batch-size "$BATCH" --repeat 2
echo "== 3. pipeline, EfficientNet-Lite0 on 640x480"
"$PY" scripts/bench_pipeline.py "$WORK/vga" --device cuda --batch-size "$BATCH" --repeat 2 --precision-check
