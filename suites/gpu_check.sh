#!/usr/bin/env bash
# One prepared GPU check (issue 14): everything slimbench can measure on one CUDA GPU, as JSON in OUT_DIR.
#
#     suites/gpu_check.sh OUT_DIR          # e.g. results/gpu/h100-2026-12-01
#
# Steps, each under its own timeout (their sum, 7.7 min, keeps the whole check under 8 minutes; none of
# it has been timed on a GPU yet, so the budgets are limits, not measurements):
#   1. the CUDA tests, `pytest -m cuda tests/`                       -> cuda_tests.xml (+ summary.json)
#   2. the fused suite at ~0.1B, ~0.5B and ~1B parameters, fp32 and bf16, against torch's fused and
#      foreach AdamW (`--slimbench-gpu-sizes`), with the roofline columns -> fused-float32.json, fused-bfloat16.json
#   3. the CUDA memory profile, `python -m slimbench profile --device cuda` -> profile.json
#   4. audit vs torch.cuda.memory_allocated (slimbench.memory.cuda_check): the meta audit's state bytes,
#      each tensor rounded up to 512, == memory_allocated() growth over the first step, for adamw and
#      slimadam (paper rules) on gpt2-tiny; exit 1 when any differs  -> audit_vs_allocated.json
# summary.json: the machine (GPU name, torch, git commit) and every step's command, exit status, seconds.
# Without a CUDA device it stops at once with one line on stderr and exit status 3, writing nothing.
set -uo pipefail

out=${1:-}
if [ -z "$out" ]; then
  echo "usage: suites/gpu_check.sh OUT_DIR" >&2
  exit 2
fi
cd "$(dirname "$0")/.." || exit 2
py=${PYTHON:-python}
if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check: no CUDA device (torch.cuda.is_available() is False); nothing was run" >&2
  exit 3
fi
mkdir -p "$out" || exit 2
steps="$out/steps.jsonl"
: > "$steps"
failed=0

# step NAME TIMEOUT_S CMD...: run CMD with its output in OUT_DIR/NAME.log, and record it in steps.jsonl.
step() {
  local name=$1 limit=$2
  shift 2
  echo "gpu_check: $name ($*)" >&2
  local t0 rc
  t0=$(date +%s.%N)
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  rc=$?
  [ "$rc" -eq 0 ] || failed=1
  "$py" - "$name" "$rc" "$t0" "$limit" "$*" >> "$steps" <<'EOF'
import json, sys, time
name, rc, t0, limit, cmd = sys.argv[1:]
print(json.dumps({"step": name, "command": cmd, "rc": int(rc), "timed_out": int(rc) in (124, 137),
                  "timeout_s": int(limit), "seconds": round(time.time() - float(t0), 1)}))
EOF
  echo "gpu_check: $name rc=$rc" >&2
}

step cuda_tests 90 "$py" -m pytest -q -m cuda tests/ --junitxml="$out/cuda_tests.xml"
for dtype in float32 bfloat16; do
  step "fused-$dtype" 150 "$py" -m pytest -q suites/test_bench_fused.py -m gpu_size --slimbench-gpu-sizes \
    --slimbench-device cuda --slimbench-dtype "$dtype" --benchmark-json="$out/fused-$dtype.json"
done
step profile 45 "$py" -m slimbench profile --device cuda --model gpt2-small --format json --out "$out/profile.json"
step audit_vs_allocated 25 "$py" -c '
import json, sys
from slimbench.memory.cuda_check import audit_vs_allocated
res = audit_vs_allocated("gpt2-tiny", ["adamw", "slimadam"])
open(sys.argv[1], "w").write(json.dumps(res.to_dict(), indent=2) + "\n")
sys.exit(0 if res.all_equal else 1)' "$out/audit_vs_allocated.json"

"$py" - "$out" <<'EOF' > "$out/summary.json"
import json, subprocess, sys, xml.etree.ElementTree as ET
from pathlib import Path
import torch
out = Path(sys.argv[1])
steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines() if line.strip()]
tests = None
if (out / "cuda_tests.xml").exists():
    suite = ET.parse(out / "cuda_tests.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    tests = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
audit = None  # per optimizer: predicted == measured, from audit_vs_allocated.json when that step wrote it
if (out / "audit_vs_allocated.json").exists():
    rows = json.loads((out / "audit_vs_allocated.json").read_text())["rows"]
    audit = {r["optimizer"]: {"equal": r["equal"], "difference": r["difference"]} for r in rows}
print(json.dumps({"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda, "torch": torch.__version__,
                  "commit": commit, "steps": steps, "cuda_tests": tests,
                  "audit_vs_allocated": audit}, indent=2))
EOF
echo "gpu_check: wrote $out (failed steps: $failed)" >&2
exit "$failed"
