#!/usr/bin/env bash
# One short check for a lent GPU (expected 3-4 minutes on one H100/H200, not yet measured; each
# part has a timeout (510 s in all), so the whole script ends within 9 minutes):
#   1. bf16 MINT step vs plain supervised step for ViT-B/16 (batch 64) and ViT-L/16 (batch 32),
#      full DINOv2-sized settings (2 x 224 + 8 x 96 crops, 65,536 prototypes), random weights
#      (timm architectures, pretrained=False): images/s and peak memory; ST isolation by the
#      default mask-free split attention (flash kernel allowed) and by the dense mask
#      (`mint-mask`, rules the flash kernel out), ViT-B also without st_isolation;
#   2. embedding throughput, `mint embed`'s loop against HEST-Bench's (benchmarks/embed.py):
#      ViT-L/16 (UNI's architecture, random weights), fp16 autocast as HEST embeds UNI, 4096
#      patches, batch 128, 8 loader workers;
#   3. a real 200-step demo training run (`mint train`, tiny-vit, demo hyperparameters) on toy
#      shards written here (the workflow's results/ is not on the device), then load_model.
# Figures go to stdout and to $OUT (default benchmarks/out/gpu_check).
# Needs the project environment: PYTHON=/path/to/python, else .venv/bin/python, else python3.
# An environment that has only PyTorch, timm, h5py, OpenCV, pandas, scikit-learn, tensorboard
# and the like (a GPU image) also needs `webdataset` and `braceexpand`; the script stops at once,
# naming what is missing, rather than failing in every part.
# DRY=1 runs the same script at toy sizes on the CPU (to check the script itself).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/out/gpu_check}"
mkdir -p "$OUT"
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MINT_NO_PROGRESS=1
START=$(date +%s)
status=0
if [ "${DRY:-0}" = 1 ]; then
  DEV=cpu; TINY=--tiny; BB=2; BL=2; NS=1; NTRAIN=64; DSTEPS=6; PREC=fp32
  EMB=tiny-vit; EN=64; EW=1; EPREC=fp32
else
  DEV=cuda; TINY=; BB=64; BL=32; NS=0; NTRAIN=1024; DSTEPS=200; PREC=bf16
  EMB=timm:vit_large_patch16_224; EN=4096; EW=8; EPREC=fp16
fi

{
  echo "## gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not available"
  "$PY" -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__, 'gpu', torch.cuda.is_available())"
} 2>&1 | tee "$OUT/env.txt"
if ! missing=$("$PY" -c "
import importlib
need = ('torch', 'torchvision', 'timm', 'numpy', 'h5py', 'cv2', 'PIL', 'pandas', 'yaml', 'tqdm',
        'safetensors', 'webdataset', 'braceexpand', 'tensorboard')
gone = []
for m in need:
    try:
        importlib.import_module(m)
    except Exception:  # absent, or present but broken (e.g. cv2 without its system libraries)
        gone.append(m)
print(' '.join(gone)); raise SystemExit(1 if gone else 0)"); then
  echo "gpu_check: $PY cannot import: ${missing:-python itself} (pip install -e . installs all)" | tee "$OUT/summary.txt"
  exit 2
fi

step() {  # name, timeout seconds, command...
  local name=$1 limit=$2
  shift 2
  echo "### $name" | tee -a "$OUT/summary.txt"
  timeout "$limit" "$@" 2>"$OUT/$name.err" | tee "$OUT/$name.txt" | tee -a "$OUT/summary.txt"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    echo "$name: FAILED (exit $rc); last lines of $OUT/$name.err:" | tee -a "$OUT/summary.txt"
    tail -n 5 "$OUT/$name.err" | tee -a "$OUT/summary.txt"
    status=1
  fi
}

: > "$OUT/summary.txt"
step vit_b 110 "$PY" benchmarks/train_step.py --backbone timm:vit_base_patch16_224 $TINY \
  --batch-size "$BB" --steps $((8 - 7 * NS)) --warmup $((3 - 2 * NS)) --precision "$PREC" \
  --params '{}' --device "$DEV" --variants mint,mint-mask,plain,mint-noiso --json-out "$OUT/vit_b.json"
step vit_l 100 "$PY" benchmarks/train_step.py --backbone timm:vit_large_patch16_224 $TINY \
  --batch-size "$BL" --steps $((6 - 5 * NS)) --warmup $((2 - NS)) --precision "$PREC" \
  --params '{}' --device "$DEV" --variants mint,mint-mask,plain --json-out "$OUT/vit_l.json"
step embed 120 "$PY" benchmarks/embed.py --backbone "$EMB" --n "$EN" --batch-size 128 \
  --num-workers "$EW" --repeats 2 --device "$DEV" --precision "$EPREC"

step toy_shards 40 "$PY" -c "
from mint.train.toy import write_toy_shards
print(write_toy_shards('$OUT/toy_shards', n_train=$NTRAIN, n_val=32, samples_per_shard=128,
                       n_genes={'visium': 200, 'xenium': 100}))"

DEMO='{"backbone": "tiny-vit", "steps": '"$DSTEPS"', "batch_size": 16, "lr": 2.0e-4, "head_lr": 2.0e-3,
"warmup_steps": 15, "n_local_crops": 2, "dino_prototypes": 512, "dino_hidden_dim": 128,
"dino_bottleneck_dim": 64, "num_workers": 6, "checkpoint_every": 100, "log_every": 2,
"val_every": 100}'
rm -rf "$OUT/demo_run"
t0=$(date +%s)
step demo_train 100 "$PY" -m mint.cli train --index "$OUT/toy_shards/index.json" \
  --out-dir "$OUT/demo_run" --params "$DEMO" --device "$DEV"
echo "demo_train wall: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/summary.txt"
step demo_result 40 "$PY" -c "
import csv, statistics, torch, mint
rows = list(csv.DictReader(open('$OUT/demo_run/metrics.csv')))
val = [r for r in rows if r['split'] == 'val']
tr = [r for r in rows if r['split'] == 'train']
print('val loss (visium+xenium): start %s -> end %s' % (val[0]['loss'], val[-1]['loss']))
print('train images/s (median of log windows): %.0f' % statistics.median(float(r['images_per_s']) for r in tr[1:]))
m = mint.load_model('$OUT/demo_run', device='$DEV')
with torch.no_grad():
    out = m(torch.randn(4, 3, 224, 224, device='$DEV'))
print('load_model outputs:', {k: tuple(v.shape) for k, v in out.items()})"

echo "total wall: $(( $(date +%s) - START )) s" | tee -a "$OUT/summary.txt"
exit $status
