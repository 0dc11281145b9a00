#!/usr/bin/env bash
# The GPU check in one call: install the wheels carried with the working tree (no network),
# then run scripts/gpu_check.py (arguments are passed on). See docs/performance.md.
#
#   bash scripts/gpu_check.sh                  # on a CUDA machine: ~5-8 minutes, report in $OUT
#   bash scripts/gpu_check.sh --cpu-smoke      # the plumbing on a CPU, tiny model (~30 s)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

if ! "$PYTHON" -c "import diffusers, marshmallow, apispec, prometheus_client, aiohttp" 2>/dev/null; then
  WHEELS=${WHEELS:-}
  if [ -z "$WHEELS" ]; then
    for dir in .whl wheels; do
      if compgen -G "$dir/*.whl" >/dev/null; then WHEELS=$dir; break; fi
    done
  fi
  if [ -z "$WHEELS" ]; then
    echo "gpu_check: diffusers/marshmallow/apispec are missing and no wheels were found in .whl/ or wheels/;" >&2
    echo "prepare them where pip works (see docs/performance.md) and carry the folder along" >&2
    exit 2
  fi
  SITE=${GPU_CHECK_SITE:-/tmp/gpu_check_site}
  "$PYTHON" -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv || true
exec "$PYTHON" scripts/gpu_check.py "$@"
