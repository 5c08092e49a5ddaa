# GraphDistill on the official Airflow 3.3 image (Python 3.11), running as the airflow user.
#   docker build -t graphdistill .
#   docker run --rm -p 8080:8080 -v graphdistill-data:/opt/airflow/graphdistill graphdistill standalone
# GPU images: build with TORCH_SPEC naming a CUDA build of torch (and PIP_EXTRA_INDEX_URL pointing
# at its index), and EXTRAS=tensorrt to add the TensorRT conversion.
FROM apache/airflow:3.3.2-python3.11

ARG TORCH_SPEC="torch==2.13.0"
ARG PIP_EXTRA_INDEX_URL=""
ARG EXTRAS=""

ENV GRAPHDISTILL_ROOT=/opt/airflow/graphdistill \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/graphdistill/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/graphdistill/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    PYTHONPATH=/opt/graphdistill

USER airflow
WORKDIR /opt/graphdistill

# torch first, so the project's torch range is satisfied and pip never swaps in another build.
RUN pip install --no-cache-dir ${PIP_EXTRA_INDEX_URL:+--extra-index-url "$PIP_EXTRA_INDEX_URL"} "${TORCH_SPEC}"

COPY --chown=airflow:root pyproject.toml README.md ./
COPY --chown=airflow:root components ./components
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -e ".${EXTRAS:+[$EXTRAS]}"

COPY --chown=airflow:root config ./config
COPY --chown=airflow:root dags ./dags
# The Airflow-facing adapters (Assets, notifier, run notes, metrics, UI plugin) and the plugins folder.
COPY --chown=airflow:root graphdistill_airflow ./graphdistill_airflow
COPY --chown=airflow:root plugins ./plugins
COPY --chown=airflow:root feature_repo ./feature_repo
COPY --chown=airflow:root deploy ./deploy

RUN mkdir -p "${GRAPHDISTILL_ROOT}" && python -c "from components.core.dgl_compat import import_dgl; import_dgl()"
