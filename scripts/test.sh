#!/usr/bin/env bash
# The test suite, on a fresh machine: installs what it needs, then runs pytest.
# Extra arguments go to pytest, e.g. scripts/test.sh -k memory
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false ANONYMIZED_TELEMETRY=False
exec .venv/bin/python -m pytest --timeout=900 "$@"
