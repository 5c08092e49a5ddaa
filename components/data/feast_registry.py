"""Feast's file registry, written atomically.

Feast 0.67's FileRegistryStore opens ``registry.db`` with mode "wb" (truncating it) and then
serializes and writes: a kill in between leaves a 0-byte registry, and every online read fails
until the features stage runs again (issue 20: 10 of 10 write-point kills). This store writes a
temporary sibling, fsyncs and renames, so readers see the old or the new registry, never a torn
one. The pipeline selects it through ``registry_store_type`` (components.data.features.repo_config_data);
a person's ``feast apply`` on a copy of the repo uses Feast's own store on the same file.
"""

from __future__ import annotations

import uuid

from feast.infra.registry.file import FileRegistryStore
from feast.utils import _utc_now

from components.core.catalog import atomic_write_bytes


class AtomicFileRegistryStore(FileRegistryStore):
    def _write_registry(self, registry_proto) -> None:
        # The two stamps FileRegistryStore._write_registry sets, then one atomic replace.
        registry_proto.version_id = str(uuid.uuid4())
        registry_proto.last_updated.FromDatetime(_utc_now())
        atomic_write_bytes(self._filepath, registry_proto.SerializeToString())
