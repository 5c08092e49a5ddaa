-- Feast's SQL registry lives beside Airflow's metadata DB (feature_store.yaml: registry_type sql).
CREATE DATABASE feast_registry;
