# Sourced by scripts/demo and scripts/test: keep Prefect's state inside the project, quiet and offline-friendly.
export PREFECT_HOME="${PREFECT_HOME:-$PWD/.prefect}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export DO_NOT_TRACK=1
export HF_HUB_DISABLE_TELEMETRY=1
export TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1
# Waiting OpenMP threads sleep instead of spinning (10x faster steps on a busy 2-core machine; flows/cli.py).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
# Prefect's 20 s default for the temporary API to come up times out on a busy machine.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-120}"
