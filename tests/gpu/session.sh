#!/usr/bin/env bash
# A GPU machine held for a short time, in time-boxed chunks (tests/gpu/README.md): the GPU tests, the speed
# survey, then the campaign, with the records packed into one archive at the end of each chunk.
#   1. bash tests/gpu/session.sh first      # GPU tests, the speed survey, then the campaign until time is up
#   2. bash tests/gpu/session.sh campaign   # the campaign goes on (started again if it is not running) until
#                                           # time is up; the records come back at the end
# Once results/bench/cuda-*.json is committed, `campaign` alone, as often as the machine allows.
# FLEXPOOL_SECONDS: how long a chunk may take (default 580), FLEXPOOL_OUT: where its logs, the bench JSON,
# records.tgz (the records and run logs so far; unpack its runs/ into results/runs/ and commit the JSONs) and
# status.txt go (default /tmp/flexpool-out), FLEXPOOL_STATE: what lives from chunk to chunk (default
# /root/flexpool), FLEXPOOL_GIT_COMMIT: the commit that records and bench JSONs name where the checkout has no
# .git. Wheels in .whl/ are installed first (for a Python without submitit), Fashion-MNIST's *.gz are taken from
# .devdata/fashion-mnist/. The campaign is FLEXPOOL_CAMPAIGN (launch's plan arguments; default: both tables,
# Fashion-MNIST, 5 seeds): `repro.launch` in its own session (setsid), so it outlives a chunk while the machine
# is held, in the regime the survey named (else eager, 4 runs side by side), skipping the runs whose records
# are committed. Runs cut off when the machine goes train again next time.
set -uo pipefail
phase=${1:?usage: bash tests/gpu/session.sh first|tests|survey|campaign}
out_dir=${FLEXPOOL_OUT:-/tmp/flexpool-out}
state=${FLEXPOOL_STATE:-/root/flexpool}  # outside the checkout: kept between calls while the machine is warm
until_s=${FLEXPOOL_SECONDS:-580}
campaign=${FLEXPOOL_CAMPAIGN:-all --datasets fashion_mnist --seeds 5}
mkdir -p "$out_dir" "$state/results" "$state/data/FashionMNIST/raw"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1 WANDB_MODE=disabled  # no wandb there
left() { echo $((until_s - SECONDS)); }

machine() {
  { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
    echo "commit ${FLEXPOOL_GIT_COMMIT:-unknown: set FLEXPOOL_GIT_COMMIT}"; date -u; } | tee "$out_dir/machine.txt"
}

gpu_tests() {  # in `first`, the survey and the campaign that follow test themselves: their tests are left out
  timeout "$1" python3 -m pytest -m gpu tests/gpu -q -p no:cacheprovider -x --durations=10 ${2:+-k "$2"} 2>&1 \
    | tee "$out_dir/gpu-tests.log"
}

survey() {
  local cap=$1; shift
  timeout "$cap" python3 -m repro.bench --survey "$@" --out "$state/bench" 2>&1 | tee "$out_dir/survey.log"
  local rc=${PIPESTATUS[0]}
  cp "$state"/bench/cuda-*.json "$out_dir/" 2>/dev/null
  return "$rc"
}

regime() {  # "<compile mode> <runs per GPU>": the newest survey's fastest, this machine's or a committed one
  python3 - "$state"/bench/cuda-*.json results/bench/cuda-*.json <<'EOF'
import json, sys
from pathlib import Path
found = sorted((p for p in map(Path, sys.argv[1:]) if p.is_file()), key=lambda p: p.name)
best = json.loads(found[-1].read_text())["best"] if found else {"regime": "off/bf16", "runs": 4}
print(best["regime"].split("/")[0], best["runs"])
EOF
}

campaign() {
  cp -n .devdata/fashion-mnist/*.gz "$state/data/FashionMNIST/raw/" 2>/dev/null
  [ -d results/runs ] && cp -rn results/runs "$state/results/"  # committed records: those runs are done
  if ! { [ -f "$state/launch.pid" ] && kill -0 "$(cat "$state/launch.pid")" 2>/dev/null; }; then
    read -r mode runs < <(regime)
    mode=${mode:-off} runs=${runs:-4}  # an unreadable survey: eager, 4 runs side by side
    echo "campaign: $campaign, --compile $mode --runs-per-gpu $runs" | tee -a "$state/launch.log"
    # shellcheck disable=SC2086  # the plan arguments are words
    setsid python3 -m repro.launch $campaign --executor local --no-snapshot --wait --compile "$mode" \
      --runs-per-gpu "$runs" --data-root "$state/data" --results-dir "$state/results" \
      >>"$state/launch.log" 2>&1 </dev/null &
    echo $! >"$state/launch.pid"
  fi
  while kill -0 "$(cat "$state/launch.pid")" 2>/dev/null && [ "$(left)" -gt 15 ]; do sleep 5; done
  # shellcheck disable=SC2086
  python3 -m repro.status $campaign --data-root "$state/data" --results-dir "$state/results" 2>&1 \
    | tee "$out_dir/status.txt"
  (cd "$state/results" && tar -czf "$out_dir/records.tgz" runs $(ls -d slurm-logs/runs 2>/dev/null))
  cp "$state/launch.log" "$out_dir/"
}

machine
case $phase in
  tests) gpu_tests $((until_s - 10)) ;;
  survey) survey $((until_s - 10)) ;;
  campaign) campaign ;;
  first)
    gpu_tests 270 "not survey and not launcher"
    case $? in
      0) ;;
      124) echo "the GPU tests ran out of time (gpu-tests.log says which passed); going on" ;;
      *) echo "a GPU test failed: no survey, no campaign (a wrong result is worse than a slow one)"; exit 1 ;;
    esac
    # The shortened survey (estimated 3 minutes; the whole one, `survey`, 8): eager against one CUDA graph, 1, 4
    # and 8 runs side by side, 2 s each, no column compiled one by one.
    survey $(($(left) - 120)) --regimes off/bf16 reduce-overhead/bf16 --packing 1 4 8 --seconds 2 --no-columns \
      || echo "the survey did not finish: the campaign takes its defaults"
    campaign ;;
  *) echo "unknown phase $phase: first, tests, survey or campaign" >&2; exit 2 ;;
esac
