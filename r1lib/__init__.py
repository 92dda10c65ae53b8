"""The building blocks every stage may use; never a stage or a flow.

The modules at this level are the core every group uses: the configuration and its presets, the path types and
roots, the preflight check, crash-safe I/O, errors, the run folder, stage results, Prefect policy, process defaults
and every third-party private API (compat). The groups: data/, model/, training/, export/, ops/, rehearsal/.
"""

from r1lib.process import die_with_spawning_parent

# A child that multiprocessing spawns from the r1-finetune command (a local Dask cluster's worker) imports this
# package first: it dies with that process from here on (the flows package does the same for python -m flows.*).
die_with_spawning_parent()
