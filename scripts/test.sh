#!/usr/bin/env bash
# The test suite, on a fresh machine: installs what it needs, then runs pytest.
# Extra arguments go to pytest, e.g. scripts/test.sh -k memory
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false ANONYMIZED_TELEMETRY=False
# OpenMP threads that spin while waiting make torch many times slower when another
# process shares the cores (the embedding child, a scheduler, a second test worker).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
# Two test processes by default (SEAL_TEST_WORKERS=0: one). Whole files go to one worker
# (--dist loadfile), so a file's module fixtures, e.g. the demo run, are built once, in
# collection order (--no-loadscope-reorder: tests/conftest.py puts the demo first). Many
# tests wait on subprocesses, servers and fsync rather than compute: even on 2 cores,
# two workers finish sooner.
# --timeout: a guard against a hang only. Under load (3-10 on 2 cores) the demo took 18 min;
# tests wait on progress instead (tests/waits.py), so a slow machine is slow, not red.
exec .venv/bin/python -m pytest --timeout=3600 -n "${SEAL_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
