"""Feast's local file registry, written atomically.

Feast's ``FileRegistryStore`` rewrites ``registry.db`` in place (open with truncation,
then write). A run that reads feature definitions while another run applies or
materialises can then read an empty or half-written registry and fail. This store
writes the new registry next to the old one and renames it over it: readers see the
previous registry or the new one, never a partial file. (On S3 a PUT is already atomic.)

Selected by ``RegistryConfig.registry_store_type`` (see :func:`streamrec_assets.feature_repo.repo_config`).
"""

from __future__ import annotations

import uuid

from feast.infra.registry.file import FileRegistryStore
from feast.protos.feast.core.Registry_pb2 import Registry as RegistryProto
from feast.utils import _utc_now

from streamrec_assets.storage import storage_path, write_bytes

#: The class path Feast imports (its name must end with ``RegistryStore``).
CLASS_PATH = f"{__name__}.AtomicFileRegistryStore"


class AtomicFileRegistryStore(FileRegistryStore):
    def _write_registry(self, registry_proto: RegistryProto) -> None:
        registry_proto.version_id = str(uuid.uuid4())
        registry_proto.last_updated.FromDatetime(_utc_now())
        write_bytes(registry_proto.SerializeToString(), storage_path(str(self._filepath)))
