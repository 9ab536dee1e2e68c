"""Code versions that change when the code does.

Dagster derives data versions (and the UI's "code version changed" staleness) from each
asset's ``code_version``, and the model registry's no-twin fingerprint includes the
registry asset's. A hand-written ``code_version="1"`` that nobody bumps makes both lie
after a code change. Here an asset's code version is a hash of the source of the module
that defines it and of every ``streamrec_assets`` module that module imports (its pure
functions in ``core/``, the contracts, the feature repository, ...), followed one level
deep. Any edit to that code gives a new version; nothing else does.
"""

from __future__ import annotations

import hashlib
import importlib
import re
from collections.abc import Iterable
from functools import cache

import dagster as dg

PACKAGE = "streamrec_assets"
_IMPORT = re.compile(r"^\s*(?:from\s+(streamrec_assets(?:\.\w+)*)\s+import\s+([\w\s,()]+)|import\s+(streamrec_assets(?:\.\w+)*))",
                     re.MULTILINE)


@cache
def _source(module: str) -> str:
    mod = importlib.import_module(module)
    path = getattr(mod, "__file__", None)
    if not path:
        return ""
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _is_module(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except ImportError:
        return False


@cache
def imported_modules(module: str) -> tuple[str, ...]:
    """The ``streamrec_assets`` modules ``module`` imports (``from x import y`` counts y when a module)."""
    found: set[str] = set()
    for match in _IMPORT.finditer(_source(module)):
        base, names, plain = match.groups()
        if plain:
            found.add(plain)
            continue
        found.add(base)
        for name in re.split(r"[\s,()]+", names or ""):
            if name and _is_module(f"{base}.{name}"):
                found.add(f"{base}.{name}")
    found.discard(PACKAGE)
    found.discard(module)
    return tuple(sorted(found))


@cache
def module_code_version(module: str) -> str:
    """Hash of ``module`` and of the package modules it imports directly (12 hex digits)."""
    digest = hashlib.sha256()
    for name in (module, *imported_modules(module)):
        digest.update(name.encode())
        digest.update(_source(name).encode())
    return digest.hexdigest()[:12]


def _defining_module(assets_def: dg.AssetsDefinition) -> str | None:
    fn = getattr(assets_def.op.compute_fn, "decorated_fn", None) or assets_def.op.compute_fn
    return getattr(fn, "__module__", None)


def with_code_versions(assets: Iterable) -> list:
    """Every asset of ours gets the code version of the code that computes it."""
    out = []
    for item in assets:
        module = _defining_module(item) if isinstance(item, dg.AssetsDefinition) else None
        if module and module.startswith(PACKAGE):
            version = module_code_version(module)
            item = item.map_asset_specs(lambda spec, v=version: spec.replace_attributes(code_version=v))
        out.append(item)
    return out
