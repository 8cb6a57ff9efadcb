#!/usr/bin/env bash
# The GPU suite: everything the first lent GPU should measure, in one run of about 8 minutes on
# one H100, written to one JSON and one markdown table.
#
#   benchmarks/gpu_suite.sh                          # on the GPU machine (outputs/gpu_suite/)
#   benchmarks/gpu_suite.sh --device cpu --smoke     # dry run on CPU, tiny shapes (a default-suite test)
#
# Steps (each under its own timeout; a failed step is recorded and the suite goes on):
#   1. tests     the GPU tests, what `make test-gpu` runs (pytest -m gpu; all skip without CUDA)
#   2. train     benchmarks/train_step.py: clapkit and laion-clap 1.1.7 in one process, fp32 and
#                bf16, realistic and fixed-77 captions: training samples/s, audio embeddings/s
#                (the embedding throughput), peak memory, MFU
#   3. compile   the same with clapkit's encoders compiled (bf16, realistic captions)
#   4. clapsep   benchmarks/clapsep_step.py: the CLAPSep quick-start config, N optimizer steps
#                (the reference repository's model is not installable offline: clapkit only)
# Options: --device cuda|cpu, --smoke, --out DIR, --python PY (default: .venv/bin/python or python3).
set -uo pipefail

DEVICE=cuda
SMOKE=0
OUT=outputs/gpu_suite
PY=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "gpu_suite.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "$PY" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
STEPS_FILE="$OUT/steps.tsv"
: > "$STEPS_FILE"

if [[ $SMOKE == 1 ]]; then
  TRAIN_ARGS=(--batch-size 2 --steps 1 --warmup 0 --htsat test --text-layers 1 --seconds 1 --precision fp32
              --captions realistic)
  COMPILE_ARGS=()  # compiling takes minutes on CPU: the smoke run skips the step
  CLAPSEP_STEPS=1
  LIMIT=600
else
  TRAIN_ARGS=(--batch-size 64 --steps 10 --warmup 3 --precision fp32 bf16 --captions realistic fixed77)
  COMPILE_ARGS=(--batch-size 64 --steps 10 --warmup 5 --precision bf16 --captions realistic --compile --skip-reference)
  CLAPSEP_STEPS=50
  LIMIT=300
fi

# step NAME TIMEOUT CMD... : run, time, record "name<TAB>rc<TAB>seconds<TAB>log" in steps.tsv
step() {
  local name="$1" limit="$2"; shift 2
  local start end rc
  start=$(date +%s%N)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  end=$(date +%s%N)
  local ms=$(( (end - start) / 1000000 ))
  printf '%s\t%s\t%d.%03d\t%s\n' "$name" "$rc" $((ms / 1000)) $((ms % 1000)) "$OUT/$name.log" >> "$STEPS_FILE"
  echo "gpu_suite: $name rc=$rc ($(tail -n 1 "$OUT/$name.log" | cut -c1-120))" >&2
}

if [[ $SMOKE == 1 ]]; then
  step tests 120 "$PY" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider
else
  step tests 240 "$PY" -m pytest -q -m gpu -p no:cacheprovider
fi
step train "$LIMIT" "$PY" benchmarks/train_step.py --device "$DEVICE" "${TRAIN_ARGS[@]}" --json "$OUT/train_step.json"
if [[ ${#COMPILE_ARGS[@]} -gt 0 ]]; then
  step compile "$LIMIT" "$PY" benchmarks/train_step.py --device "$DEVICE" "${COMPILE_ARGS[@]}" \
    --json "$OUT/train_step_compile.json"
else
  printf 'compile\t0\t0.000\tskipped in the smoke run\n' >> "$STEPS_FILE"
fi
ACCEL=gpu; [[ $DEVICE == cpu ]] && ACCEL=cpu
PRECISION=bf16-mixed; [[ $DEVICE == cpu ]] && PRECISION=32-true
step clapsep "$LIMIT" "$PY" benchmarks/clapsep_step.py --root "$OUT/clapsep" --max-steps "$CLAPSEP_STEPS" \
  --accelerator "$ACCEL" --precision "$PRECISION" --json "$OUT/clapsep.json"

"$PY" - "$OUT" "$DEVICE" "$SMOKE" <<'EOF'
import json, sys
from pathlib import Path

out, device, smoke = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
steps = []
for line in (out / "steps.tsv").read_text().splitlines():
    name, rc, seconds, log = line.split("\t")
    steps.append({"step": name, "rc": int(rc), "seconds": float(seconds), "log": log})
suite = {"device": device, "smoke": smoke, "steps": steps}
for name in ("train_step", "train_step_compile", "clapsep"):
    path = out / f"{name}.json"
    if path.is_file():
        suite[name] = json.loads(path.read_text())
(out / "gpu_suite.json").write_text(json.dumps(suite, indent=2) + "\n")
lines = [f"# GPU suite ({device}{', smoke' if smoke else ''})", "", "| step | rc | seconds |", "|---|---|---|"]
lines += [f"| {s['step']} | {s['rc']} | {s['seconds']:.1f} |" for s in steps]
rows = [*suite.get("train_step", {}).get("results", []), *suite.get("train_step_compile", {}).get("results", [])]
if rows:
    lines += ["", "| library | captions | precision | train samples/s | audio emb/s | peak GB | MFU |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = f"{r['peak_memory_gb']:.2f}" if r.get("peak_memory_gb") is not None else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        lines.append(f"| {r['library']} | {r.get('captions', 'fixed77')} | {r['precision']} | "
                     f"{r['train_samples_per_s']:.1f} | {r['audio_embeddings_per_s']:.1f} | {peak} | {mfu} |")
if "clapsep" in suite:
    c = suite["clapsep"]
    rate = f"{c['steps_per_s']:.2f} steps/s after the first" if c.get("steps_per_s") else "one step"
    lines += ["", f"CLAPSep quick start: {c.get('steps')} steps in {c.get('fit_seconds', 0):.1f} s "
                  f"({rate}, {c.get('precision')})"]
(out / "gpu_suite.md").write_text("\n".join(lines) + "\n")
print(out / "gpu_suite.json")
failed = [s["step"] for s in steps if s["rc"] != 0]
sys.exit(1 if failed else 0)
EOF
