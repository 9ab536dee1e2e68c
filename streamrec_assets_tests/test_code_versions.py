"""Code versions follow the code: an edit to an asset's module, or to a module it imports, changes it."""

from __future__ import annotations

import sys

import dagster as dg

from streamrec_assets import code_versions


def _clear() -> None:
    for fn in (code_versions._source, code_versions.imported_modules, code_versions.module_code_version):
        fn.cache_clear()


def test_version_changes_with_the_module_and_its_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "streamrec_assets_probe"
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(code_versions, "PACKAGE", "streamrec_assets_probe")
    monkeypatch.setattr(code_versions, "_IMPORT", __import__("re").compile(
        code_versions._IMPORT.pattern.replace("streamrec_assets", "streamrec_assets_probe"), __import__("re").MULTILINE))
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "core.py").write_text("def f(x):\n    return x + 1\n")
    (pkg / "asset.py").write_text("from streamrec_assets_probe import core\n\ndef g():\n    return core.f(1)\n")
    _clear()
    before = code_versions.module_code_version("streamrec_assets_probe.asset")
    assert code_versions.imported_modules("streamrec_assets_probe.asset") == ("streamrec_assets_probe.core",)
    (pkg / "core.py").write_text("def f(x):\n    return x + 2\n")  # the pure function changed
    _clear()
    after = code_versions.module_code_version("streamrec_assets_probe.asset")
    assert after != before
    _clear()
    assert code_versions.module_code_version("streamrec_assets_probe.asset") == after, "stable for the same code"
    for name in [m for m in sys.modules if m.startswith("streamrec_assets_probe")]:
        del sys.modules[name]
    _clear()


def test_every_asset_carries_its_derived_code_version():
    from streamrec_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        version = graph.get(key).code_version
        assert version and len(version) == 12 and version != "1", (key, version)
    ranker = graph.get(dg.AssetKey("ranking_model")).code_version
    assert ranker == code_versions.module_code_version("streamrec_assets.assets.models")
