"""The one place we reach into a library's private API: ibis's DuckDB extension loading.

Feast's DuckDB offline store reads ``s3://`` sources through ibis, which asks DuckDB to
install the ``httpfs`` extension (a download at run time, impossible here and unwanted in
production). ``feature_repo.enable_s3`` replaces ``Backend._load_extensions`` so that httpfs
is skipped and ``s3://`` goes through the fsspec filesystem it registers (s3fs) instead.
These tests fail when ibis changes what we patch, before any S3 read fails in production.
"""

from __future__ import annotations

import inspect

from ibis.backends.duckdb import Backend


def test_the_private_method_we_patch_still_has_the_same_shape():
    import ibis.backends.duckdb as duckdb_backend

    original = getattr(Backend._load_extensions, "__wrapped__", Backend._load_extensions)
    params = list(inspect.signature(original).parameters)
    assert params[:3] == ["self", "extensions", "force_install"], params
    source = inspect.getsource(duckdb_backend)
    assert "httpfs" in source, (
        "ibis no longer loads httpfs for s3:// reads: the patch in feature_repo.enable_s3 may be unnecessary"
    )


def test_enable_s3_skips_httpfs_and_registers_s3fs(monkeypatch):
    import ibis

    from streamrec_assets import feature_repo

    seen: list[list[str]] = []
    monkeypatch.setattr(Backend, "_load_extensions", lambda self, extensions, force_install=False: seen.append(
        list(extensions)))
    monkeypatch.setattr(feature_repo, "_S3_READY", set())
    monkeypatch.setenv("FEAST_S3_ENDPOINT_URL", "http://127.0.0.1:9")  # restored after the test: no leak
    feature_repo.enable_s3("http://127.0.0.1:9")
    patched = Backend._load_extensions
    assert getattr(patched, "_streamrec_fsspec", False)
    con = ibis.duckdb.connect()
    patched(con, ["httpfs"])
    patched(con, ["httpfs", "json"])
    assert seen == [["json"]], "httpfs is never installed; other extensions still load"
    registered = ibis.get_backend().con.list_filesystems()  # the connection Feast's offline store uses
    assert "s3" in registered, registered
    feature_repo.enable_s3("http://127.0.0.1:10")  # another endpoint replaces the filesystem
    assert ibis.get_backend().con.list_filesystems().count("s3") == 1
