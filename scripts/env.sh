# Sourced by scripts/demo and scripts/test: keep Prefect's state inside the project, quiet and offline-friendly.
export PREFECT_HOME="${PREFECT_HOME:-$PWD/.prefect}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export DO_NOT_TRACK=1
export HF_HUB_DISABLE_TELEMETRY=1
export TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1
# The command line starts one local Prefect server for a run and waits this long for it (r1lib/ops/local_server.py); a
# flow started any other way with no PREFECT_API_URL gets Prefect's own temporary server, which waits the second one.
# Both are generous: on a busy two-core machine the 20 s Prefect waits by default was not enough.
export R1_SERVER_START_TIMEOUT="${R1_SERVER_START_TIMEOUT:-600}"
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-600}"
# The same process defaults as r1lib/process.py (the test suite and children get them too).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
export TQDM_DELAY="${TQDM_DELAY:-5}"
