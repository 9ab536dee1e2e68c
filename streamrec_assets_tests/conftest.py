"""Shared fixtures: tiny generated landing zones and isolated settings."""

from __future__ import annotations

import os

import pytest

from streamrec_assets import datagen
from streamrec_assets.settings import Settings

# Tests must not inherit a developer's storage configuration.
for _var in ("STREAMREC_STORAGE_URI", "STREAMREC_LANDING_URI", "STREAMREC_START_DATE", "STREAMREC_S3_ENDPOINT_URL"):
    os.environ.pop(_var, None)

START = "2026-01-01"
SEED = 11
TINY_EVENTS = 600


def tiny_settings(root) -> Settings:
    return Settings(
        home=str(root),
        storage_uri=str(root / "storage"),
        landing_uri=str(root / "landing"),
        start_date=START,
    )


@pytest.fixture(scope="session")
def tiny_world():
    return datagen.World.build(SEED, datagen.default_users(TINY_EVENTS), datagen.default_items(TINY_EVENTS))


@pytest.fixture(scope="session")
def landing_32(tmp_path_factory):
    """A landing zone with 32 generated days (2026-01-01..2026-02-01) of tiny data."""
    root = tmp_path_factory.mktemp("landing32")
    datagen.generate(str(root / "landing"), START, "2026-02-01", TINY_EVENTS, SEED)
    return root
