"""Validate deploy/helm/values.yaml against Airflow's official chart, as Helm does before rendering.

    python deploy/helm/validate_values.py PATH/TO/airflow/chart [deploy/helm/values.yaml]

PATH/TO/airflow/chart is the chart folder of an apache/airflow checkout (or an unpacked chart release):
its values.schema.json and values.yaml are read from there, nothing is copied. Checks: our file alone and
merged over the chart's defaults (maps merged, lists replaced, as Helm merges) against the schema; each
``workers.celery.sets`` entry against the ``workers`` + ``workers.celery`` schema (the chart's schema
leaves set items free-form, so a misspelled key there would pass Helm silently). Exit 1 on any error.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import jsonschema
import yaml


def merged(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        both_maps = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merged(out[key], value) if both_maps else copy.deepcopy(value)
    return out


def worker_set_schema(schema: dict) -> dict:
    workers = schema["properties"]["workers"]
    celery = workers["properties"]["celery"]["properties"]
    return {**workers, "definitions": schema["definitions"],
            "properties": {**workers["properties"], **celery, "name": {"type": "string"}, "queue": {"type": "string"}}}


def errors(chart: Path, values: dict) -> list[str]:
    schema = json.loads((chart / "values.schema.json").read_text())
    defaults = yaml.safe_load((chart / "values.yaml").read_text())
    found = []
    for label, document in (("values", values), ("chart defaults + values", merged(defaults, values))):
        found += [f"{label}: {'/'.join(map(str, e.path))}: {e.message}"
                  for e in jsonschema.Draft7Validator(schema).iter_errors(document)]
    for worker_set in values.get("workers", {}).get("celery", {}).get("sets", []):
        found += [f"workers.celery.sets[{worker_set.get('name')}]: {'/'.join(map(str, e.path))}: {e.message}"
                  for e in jsonschema.Draft7Validator(worker_set_schema(schema)).iter_errors(worker_set)]
    return found


def main(argv: list[str]) -> int:
    chart = Path(argv[0])
    values_file = Path(argv[1]) if len(argv) > 1 else Path(__file__).with_name("values.yaml")
    chart_yaml = yaml.safe_load((chart / "Chart.yaml").read_text())
    found = errors(chart, yaml.safe_load(values_file.read_text()))
    print(f"{values_file} against chart {chart_yaml['version']} (appVersion {chart_yaml['appVersion']}): "
          f"{len(found)} errors")
    for line in found:
        print(f"  {line}")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
