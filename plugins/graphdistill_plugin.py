"""Airflow plugins folder entry: registers the GraphDistill UI plugin (graphdistill_airflow.plugin).

Point Airflow here with AIRFLOW__CORE__PLUGINS_FOLDER=<repo>/plugins (Dockerfile, cli.airflow_env).
"""

from graphdistill_airflow.plugin import GraphDistillPlugin

__all__ = ["GraphDistillPlugin"]
