"""Operations: the command line, deployments, the local Prefect server, the GPU slot, recovery, the registry."""
