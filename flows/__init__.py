"""The Prefect flows, one module each. A child that multiprocessing spawns from a flow process (a local Dask
cluster's worker) imports this package first: it dies with that process from here on (r1lib/process.py)."""

from r1lib.process import die_with_spawning_parent

die_with_spawning_parent()
