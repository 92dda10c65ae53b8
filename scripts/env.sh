# Sourced by scripts/demo and scripts/test: keep Prefect's state inside the project, quiet and offline-friendly.
export PREFECT_HOME="${PREFECT_HOME:-$PWD/.prefect}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export DO_NOT_TRACK=1
export HF_HUB_DISABLE_TELEMETRY=1
export TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1
# The same process defaults as r1lib/process.py (the test suite and children get them too).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-120}"
export TQDM_DELAY="${TQDM_DELAY:-5}"
