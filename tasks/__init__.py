"""Pipeline stages: one module per stage, plain typed functions first and a thin Prefect @task last."""
