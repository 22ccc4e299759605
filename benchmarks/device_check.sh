#!/usr/bin/env bash
# The one-run GPU check (benchmarks/device_check.py): installs what a bare GPU machine lacks, then runs it.
#
#   benchmarks/device_check.sh OUT [device_check.py options]
#
# A machine without diffusers or datasets gets them from the wheels in .whl/ (an ignored folder; under 64 MiB
# with the repository). Fetch them here, for the GPU machine's Python (3.12 on this project's H200 machines):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 datasets==5.2.0 dill==0.4.0 \
#       multiprocess==0.70.18 importlib-metadata==8.7.0
# (the other requirements, torch, accelerate, huggingface_hub, pyarrow, pandas and so on, are on that image).
set -uo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"  # the interpreter that holds torch
out="${1:?usage: benchmarks/device_check.sh OUT [options]}"
shift
mkdir -p "$out"
site=$(mktemp -d)
if compgen -G ".whl/*.whl" > /dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl || exit 1
fi
# hf-ddpm itself (its pipelines/ folder installs as hf_ddpm.pipelines).
PYTHONPATH="$site" "$python" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile \
    --target "$site" . || exit 1
export PYTHONPATH="$site" PYTHONUNBUFFERED=1
"$python" benchmarks/device_check.py --out "$out" "$@" 2>&1 | tee "$out/device_check_log.txt"
