"""The one place DGL is imported. Every module gets DGL through ``import_dgl()``.

Why: PyPI's newest DGL (2.1.0) ships GraphBolt, whose C++ library is built per torch version and
whose Python side needs ``torchdata.datapipes`` (removed in torchdata 0.10). ``import dgl`` imports
``dgl.graphbolt`` eagerly (via ``dgl.distributed``), so with any torch > 2.2.1 the whole import
fails. We use none of GraphBolt: heterographs, message passing, save/load and adjacency export
all live in DGL's core. Registering a placeholder module under ``dgl.graphbolt`` before the first
``import dgl`` keeps the core importable; touching GraphBolt then raises a clear ImportError.
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any


class _GraphBoltUnavailable(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise ImportError(
            f"dgl.graphbolt.{name} is unavailable: GraphBolt is blocked by components.core.dgl_compat "
            "because its binaries do not match the installed torch; GraphDistill uses DGL's core only"
        )


def import_dgl() -> types.ModuleType:
    """Import DGL with GraphBolt blocked; idempotent."""
    if "dgl" not in sys.modules:
        os.environ.setdefault("DGLBACKEND", "pytorch")
        sys.modules.setdefault("dgl.graphbolt", _GraphBoltUnavailable("dgl.graphbolt"))
    import dgl

    return dgl
