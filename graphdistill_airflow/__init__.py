"""GraphDistill's Airflow-facing parts: Assets, the alert notifier, DAG-run notes, metrics, the UI plugin.

components/ never imports Airflow; everything here is a thin adapter from Airflow to
components.decide.outcome (which decides what a night's outcome is and where its reports live).
Importable wherever the DAGs run (PYTHONPATH holds the repo root: Dockerfile, cli.airflow_env);
plugins/graphdistill_plugin.py registers the UI plugin from the plugins folder.
"""
