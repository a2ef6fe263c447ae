#!/usr/bin/env bash
# The measurements behind the committed regression baseline (issue 5), written into OUT.
#
#   results/baseline/measure.sh "$(mktemp -d)" gate  # CI: re-measure what is gated, compare with results/baseline
#   rm -rf results/baseline/sweep && results/baseline/measure.sh results/baseline   # refresh the baseline
#
# CPU, one torch thread everywhere: losses are then bit-reproducible, and timings are gated only as
# ratios to AdamW measured in the same run. Sweeps resume: runs whose file exists in OUT are skipped
# (hence the rm above when refreshing). About 2 minutes on 2 cores. Run from the repository root.
set -euo pipefail
out="${1:?usage: results/baseline/measure.sh OUT_DIR [gate]}"
only_gated="${2:-}"
mkdir -p "$out"

# sweeps: digits over 5 lrs (SlimAdam and AdaLayer diverge at 0.3), gpt over 2 lrs x 2 seeds
python -m slimbench run --task digits --optimizers adamw,slimadam,adalayer --lrs 3e-3,1e-2,3e-2,1e-1,3e-1 \
  --steps 60 --threads 1 --out "$out/sweep" --no-progress >/dev/null
python -m slimbench run --task gpt --optimizers adamw,slimadam,adalayer --lrs 3e-3,1e-2 --seeds 0,1 \
  --steps 30 --threads 1 --out "$out/sweep" --no-progress >/dev/null

# pytest suites: step time of every registry optimizer + short training runs (threads: 1, the suites' default)
python -m pytest suites/test_bench_step.py suites/test_bench_training.py -q -p no:cacheprovider \
  --benchmark-json="$out/bench.json" >/dev/null

# memory: a real training step (profile) and GPT-2 small on the meta device (audit)
python -m slimbench profile --model gpt2-tiny --optimizers adamw,slimadam,adalayer,adam-mini,adafactor --foreach \
  --output "$out/profile-gpt2-tiny.json" >/dev/null
python -m slimbench audit --model gpt2-small --optimizers adamw,slimadam,adalayer,adam-mini,adafactor,sm3,came,galore \
  --output "$out/audit-gpt2-small.json" >/dev/null

# SNR and rules for the report's SNR section (not gated: compare ignores them)
if [ "$only_gated" = gate ]; then echo "measured into $out (gated measurements only)"; exit 0; fi
python -m slimbench snr --task gpt --steps 200 --schedule every:25 --out "$out/snr-gpt-tiny.json" --no-progress >/dev/null
python -m slimbench rules "$out/snr-gpt-tiny.json" --depth-average --cutoff 1.0 --out "$out/rules-gpt-tiny.json" >/dev/null
echo "measured into $out"
