#!/usr/bin/env bash
# One call on a lent GPU machine (the device tool's `run`), prepared so that no device time goes to typing:
#   bash tests/gpu/session.sh tests     # pytest -m gpu tests/gpu             (~3-4 min on an H100/H200)
#   bash tests/gpu/session.sh survey    # python -m repro.bench --survey     (~6-8 min, estimated)
# Run it from the repository root there, with timeout_s 600 and FLEXPOOL_GIT_COMMIT=<this checkout's commit> in
# front (the copy there has no .git, and every record and bench JSON must name its commit). The machine's Python
# has torch, pandas, matplotlib, scipy, pyyaml, tqdm and pytest but no submitit: carry its wheel in .whl/
# (README: Speed). Logs and the bench JSON go to $OUT, which the device tool brings back; commit the JSON under
# results/bench/.
set -uo pipefail
phase=${1:?usage: bash tests/gpu/session.sh tests|survey}
out=${OUT:-/tmp/out}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
  echo "commit ${FLEXPOOL_GIT_COMMIT:-unknown: set FLEXPOOL_GIT_COMMIT}"; date -u; } | tee "$out/machine.txt"
case $phase in
  tests) timeout 420 python3 -m pytest -m gpu tests/gpu -q -p no:cacheprovider -x --durations=10 2>&1 \
           | tee "$out/gpu-tests.log" ;;
  survey) timeout 540 python3 -m repro.bench --survey --out "$out" 2>&1 | tee "$out/survey.log" ;;
  *) echo "unknown phase $phase: tests or survey" >&2; exit 2 ;;
esac
