#!/usr/bin/env bash
# benchmarks/device_check.sh: one script for a machine with an NVIDIA GPU, from a fresh checkout, in < 8 minutes.
#
#   bash benchmarks/device_check.sh                 # on the GPU machine
#   bash benchmarks/device_check.sh --cpu-dry-run   # anywhere: the same steps on the CPU, GPU parts skipped
#
# Options: --videos DIR (default ../shared/videos)  --frames N (300; dry run 16)  --decoders "1 4 8"
#          --repeat R (clip list repeated R times for the end-to-end runs; 3, dry run 1)  --no-install
#          --with-tensorrt (also pip-install TensorRT's libraries)  --out DIR (default $OUT or /tmp/videotag-device-check)
#
# What it installs (GPU mode; skipped with --no-install or when already there) -- see docs/gpu.md:
#   * a venv .venv (or $PYTHON if set) with the project: `pip install -e .` (pyproject.toml already names
#     onnxruntime-gpu, not onnxruntime).
#   * onnxruntime-gpu IN PLACE OF onnxruntime: `pip uninstall onnxruntime` (a CPU wheel installed next to the GPU
#     one shadows it), then `pip install "onnxruntime-gpu[cuda,cudnn]..."`, the build matching the driver:
#     driver CUDA >= 13 -> onnxruntime-gpu >= 1.27 (CUDA 13 build); driver CUDA 12.x -> onnxruntime-gpu < 1.27
#     (1.20-1.26 are CUDA 12 builds). The [cuda,cudnn] extras bring the CUDA runtime, cuRAND, cuFFT, NVRTC and
#     cuDNN 9 (+ cuBLAS) as pip wheels, so no system CUDA toolkit is needed, only the NVIDIA driver.
#   * --with-tensorrt: tensorrt-cu13-libs / tensorrt-cu12-libs < 11 (onnxruntime's TensorRT provider links
#     libnvinfer.so.10). Without it, TensorRT is checked only when its libraries are already there.
#   * LD_LIBRARY_PATH gets the pip wheels' nvidia/*/lib (and tensorrt_libs) directories, so the `videotag` CLI
#     (which does not call onnxruntime.preload_dlls) finds them.
#
# Steps and what they print (everything also lands in $OUT_DIR):
#   1. providers: onnxruntime version/build, providers listed, and the provider a session REALLY gets for CUDA
#      and TensorRT (a listed provider whose libraries are missing silently falls back to the CPU).
#   2. parity CPU vs CUDA (vs TensorRT when present) on the same real decoded frames for the default backbone
#      (EfficientNet-Lite0, real ImageNet weights) and the imported VideoTag ResNet-101 backbone (GENERATED
#      weights: tests/reference/numpy_paddle.py); then benchmarks/gpu_check_attention_lstm.py --bundle: both ONNX
#      forms of the peephole LSTM (scan, onnx_lstm) and the bundle's predictor + backbone, CUDA vs CPU.
#   3. end to end: `videotag extract --decoders N` of the clips at --frames frames with N = 1, 4 and 8: clips/s and
#      frames/s (sampled frames) and the GPU's utilisation (nvidia-smi sampled every 0.5 s in the background).
#      N decoder threads feed one CUDA session with batches drawn across videos; wall clock of the command,
#      model loading included. (On a checkout older than --decoders: N concurrent `videotag extract` processes.)
#
# --cpu-dry-run: proves the script's logic on a CPU-only machine: no install, device cpu, parity CPU only (the
# GPU comparisons and the LSTM GPU check are skipped and say so), no nvidia-smi.
# Exit status: 0 when every check passed; 1 when a parity check or a run failed (the rest still runs).

set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DRY=0; INSTALL=1; WITH_TRT=0; VIDEOS=../shared/videos; FRAMES=""; DECODERS="1 4 8"; REPEAT=""
OUT_DIR=${OUT:-/tmp/videotag-device-check}
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-dry-run) DRY=1 ;;
    --no-install) INSTALL=0 ;;
    --with-tensorrt) WITH_TRT=1 ;;
    --videos) VIDEOS=$2; shift ;;
    --frames) FRAMES=$2; shift ;;
    --decoders) DECODERS=$2; shift ;;
    --repeat) REPEAT=$2; shift ;;
    --out) OUT_DIR=$2; shift ;;
    -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ "$DRY" = 1 ] && INSTALL=0
FRAMES=${FRAMES:-$([ "$DRY" = 1 ] && echo 16 || echo 300)}
REPEAT=${REPEAT:-$([ "$DRY" = 1 ] && echo 1 || echo 3)}
DEVICE=$([ "$DRY" = 1 ] && echo cpu || echo cuda)
mkdir -p "$OUT_DIR/runs"
WORK=$(mktemp -d /tmp/videotag-devcheck.XXXXXX)  # big files (generated weights, feature stores) stay out of OUT_DIR
SMI_PID=""
cleanup() { [ -n "$SMI_PID" ] && kill "$SMI_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
START=$(date +%s)
FAILED=0
say() { printf '\n[%4ss] == %s\n' "$(( $(date +%s) - START ))" "$*"; }
fail() { echo "FAILED: $*"; FAILED=1; }

if [ ! -f "$VIDEOS/README.md" ] && [ -z "$(ls "$VIDEOS" 2>/dev/null)" ]; then
  echo "no clips in $VIDEOS (pass --videos DIR)" >&2; exit 2
fi

# ------------------------------------------------------------------------------------------------ 0. environment
say "environment ($([ "$DRY" = 1 ] && echo 'CPU dry run' || echo 'GPU mode'))"
if [ "$DRY" = 0 ]; then
  if ! command -v nvidia-smi >/dev/null; then echo "no nvidia-smi: not a GPU machine (use --cpu-dry-run)"; exit 2; fi
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  CUDA_MAJOR=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\)\..*/\1/p' | head -1)
  echo "driver supports CUDA ${CUDA_MAJOR:-?}"
fi
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ ! -x .venv/bin/python ]; then
    [ "$INSTALL" = 1 ] || { echo "no .venv and --no-install: set PYTHON=/path/to/python"; exit 2; }
    python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip
  fi
  PY=$ROOT/.venv/bin/python
fi
if [ "$INSTALL" = 1 ]; then
  "$PY" -c 'import videotag, torch, onnxruntime' 2>/dev/null || "$PY" -m pip install -q -e . || fail "pip install -e ."
  if [ "${CUDA_MAJOR:-0}" -ge 13 ]; then
    ORT_SPEC='onnxruntime-gpu[cuda,cudnn]>=1.27'; TRT_SPEC='tensorrt-cu13-libs<11'
  else
    ORT_SPEC='onnxruntime-gpu[cuda,cudnn]>=1.20,<1.27'; TRT_SPEC='tensorrt-cu12-libs<11'
  fi
  "$PY" -m pip uninstall -y -q onnxruntime 2>/dev/null  # the CPU wheel must not sit beside the GPU one
  echo "pip install $ORT_SPEC"
  "$PY" -m pip install -q "$ORT_SPEC" || fail "pip install $ORT_SPEC"
  if [ "$WITH_TRT" = 1 ]; then echo "pip install $TRT_SPEC"; "$PY" -m pip install -q "$TRT_SPEC" || echo "TensorRT libraries not installed"; fi
fi
NV_LIBS=$("$PY" - <<'EOF'
import glob, os, site
dirs = set()
for sp in site.getsitepackages():
    for pattern in ("nvidia/*/lib", "nvidia/*/lib64", "tensorrt_libs"):
        dirs.update(d for d in glob.glob(os.path.join(sp, pattern)) if os.path.isdir(d))
print(":".join(sorted(dirs)))
EOF
)
[ -n "$NV_LIBS" ] && export LD_LIBRARY_PATH="$NV_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "python: $PY ($("$PY" --version 2>&1)); pip wheels' CUDA libraries on LD_LIBRARY_PATH: $(echo "$NV_LIBS" | tr ':' '\n' | grep -c . || true) dirs"
VT=("$PY" -m videotag)
"${VT[@]}" setup >/dev/null 2>&1 || fail "videotag setup (default models)"
WEIGHTS=$("$PY" -c 'from videotag.core.settings import Settings; print(Settings().weights_dir)')
CPU_ONLY=$([ "$DRY" = 1 ] && echo --cpu-only || true)

# ------------------------------------------------------------------------------------------------ 1. providers
say "1. ONNX Runtime providers: listed vs really used"
# ONNX Runtime logs every provider that cannot load at length: kept in a file, summarised in the JSON line
"$PY" benchmarks/device_check.py providers "$WEIGHTS/efficientnet_lite0" $CPU_ONLY 2> "$OUT_DIR/providers.stderr" \
  | tee "$OUT_DIR/providers.jsonl" || fail "providers (ONNX Runtime's messages: $OUT_DIR/providers.stderr)"
grep -h "Failed to load library\|Failed to create" "$OUT_DIR/providers.stderr" | sed 's/^.*FAIL : //' | sort -u | head -4

# ------------------------------------------------------------------------------------------------ 2. parity
say "2a. parity: default backbone (EfficientNet-Lite0, real ImageNet weights)"
"$PY" benchmarks/device_check.py parity "$WEIGHTS/efficientnet_lite0" --clips "$VIDEOS" --trt-cache "$WORK/trt" \
  $CPU_ONLY | tee "$OUT_DIR/parity_default.jsonl" || fail "parity of the default backbone"

say "2b. parity: imported VideoTag ResNet-101 backbone (generated weights)"
"$PY" benchmarks/device_check.py build-resnet "$WORK/weights" || fail "building the generated-weights VideoTag bundle"
"$PY" benchmarks/device_check.py parity "$WORK/weights/videotag/backbone" --name videotag_tsn_resnet101 \
  --clips "$VIDEOS" --trt-cache "$WORK/trt" $CPU_ONLY | tee "$OUT_DIR/parity_resnet101.jsonl" \
  || fail "parity of the ResNet-101 backbone"

say "2c. peephole LSTM, both ONNX forms, + the bundle's predictor: CUDA vs CPU (gpu_check_attention_lstm.py)"
if [ "$DRY" = 1 ]; then
  echo "skipped in --cpu-dry-run: gpu_check_attention_lstm.py needs CUDAExecutionProvider in use"
else
  "$PY" benchmarks/gpu_check_attention_lstm.py --bundle "$WORK/weights/videotag" --json "$OUT_DIR/gpu_check_lstm.json" \
    || fail "peephole LSTM / bundle GPU check"
fi

# ------------------------------------------------------------------------------------------------ 3. end to end
say "3. end to end: videotag extract, $FRAMES frames, decoders: $DECODERS"
"$PY" - "$VIDEOS" "$REPEAT" > "$WORK/all.txt" <<'EOF'
import sys
from videotag.pipeline import expand_inputs
clips = expand_inputs([sys.argv[1]])
print("\n".join(clips * int(sys.argv[2])))
EOF
NCLIPS=$(grep -c . "$WORK/all.txt")
HAS_DECODERS=0
"${VT[@]}" extract --help 2>/dev/null | grep -q -- '--decoders' && HAS_DECODERS=1
echo "$NCLIPS inputs ($REPEAT x the clips in $VIDEOS); $([ $HAS_DECODERS = 1 ] && echo 'using extract --decoders N' || echo 'no --decoders option yet: N concurrent videotag extract processes')"
for N in $DECODERS; do
  RUN="$OUT_DIR/runs/decoders_$N"
  rm -rf "$WORK/feat_$N" && mkdir -p "$WORK/feat_$N" "$WORK/lists_$N"
  if [ "$DRY" = 0 ]; then
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 > "$RUN.smi.csv" 2>/dev/null &
    SMI_PID=$!
  fi
  T0=$(date +%s.%N)
  RC=0
  if [ "$HAS_DECODERS" = 1 ]; then
    MODE="--decoders $N"
    "${VT[@]}" extract -f "$WORK/all.txt" --frames "$FRAMES" --device "$DEVICE" --decoders "$N" \
      --out "$WORK/feat_$N" > "$RUN.log" 2>&1 || RC=$?
  else
    MODE="$N process$([ "$N" = 1 ] || echo es)"
    awk -v n="$N" -v d="$WORK/lists_$N" '{ print > (d "/" (NR - 1) % n ".txt") }' "$WORK/all.txt"
    PIDS=()
    for L in "$WORK/lists_$N"/*.txt; do  # one feature folder per process: a clip may be in two lists
      "${VT[@]}" extract -f "$L" --frames "$FRAMES" --device "$DEVICE" --out "$WORK/feat_$N/$(basename "$L" .txt)" \
        >> "$RUN.log" 2>&1 &
      PIDS+=($!)
    done
    for P in "${PIDS[@]}"; do wait "$P" || RC=$?; done
  fi
  T1=$(date +%s.%N)
  if [ -n "$SMI_PID" ]; then kill "$SMI_PID" 2>/dev/null; wait "$SMI_PID" 2>/dev/null; SMI_PID=""; fi
  WALL=$(awk -v a="$T0" -v b="$T1" 'BEGIN { printf "%.2f", b - a }')
  printf '{"decoders": %s, "mode": "%s", "device": "%s", "clips": %s, "frames": %s, "wall_s": %s, "failed": %s}\n' \
    "$N" "$MODE" "$DEVICE" "$NCLIPS" "$FRAMES" "$WALL" "$([ $RC = 0 ] && echo false || echo true)" > "$RUN.json"
  echo "decoders $N ($MODE): ${WALL}s, exit $RC"
  [ "$RC" = 0 ] || fail "end-to-end run with $N decoders (log: $RUN.log)"
done
"$PY" benchmarks/device_check.py summarize "$OUT_DIR/runs" | tee "$OUT_DIR/end_to_end.txt" || fail "end-to-end summary"

say "done in $(( $(date +%s) - START ))s; results in $OUT_DIR; $([ $FAILED = 0 ] && echo 'all checks passed' || echo 'SOME CHECKS FAILED')"
exit $FAILED
