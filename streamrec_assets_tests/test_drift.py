"""Drift monitoring: PSI, the feature_drift asset and its check, the drift scenario of the generator."""

from __future__ import annotations

import gzip
import hashlib
import json

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from streamrec_assets import datagen
from streamrec_assets.core import drift
from streamrec_assets.landing import Landing
from streamrec_assets_tests.conftest import SEED, START, TINY_EVENTS, tiny_settings

DRIFT_DAY = "2026-02-01"  # the last day; the 28-day history is full from 2026-01-28 on
NORMAL_DAY = "2026-01-31"
CHECK = "feature_psi_below_threshold"


# --------------------------------------------------------------------------- PSI


def test_psi_of_identical_distributions_is_zero():
    rng = np.random.default_rng(1)
    values = rng.normal(size=5_000)
    assert drift.psi(values, values) == pytest.approx(0.0, abs=1e-12)
    # two samples of one distribution: sampling noise only
    assert drift.psi(values, rng.normal(size=5_000)) < 0.02


@pytest.mark.parametrize(
    "current",
    [
        lambda rng: rng.normal(0.5, 1.0, size=5_000),  # mean shift of half a standard deviation
        lambda rng: rng.normal(0.0, 2.0, size=5_000),  # wider
    ],
)
def test_psi_of_shifted_distributions_exceeds_threshold(current):
    rng = np.random.default_rng(2)
    assert drift.psi(rng.normal(size=5_000), current(rng)) > drift.DEFAULT_PSI_THRESHOLD


def test_psi_on_zero_inflated_counts():
    """A rolling count: most entities had no activity on the day. Binge sessions (fewer active
    entities, more impressions each) are a shift even though the mean barely moves."""
    rng = np.random.default_rng(3)

    def counts(n, active, per_session):
        on = rng.random(n) < active
        return np.where(on, 1 + rng.poisson(per_session - 1, size=n), 0)

    reference = counts(5_000, 0.20, 7)
    assert drift.psi(reference, counts(1_000, 0.20, 7)) < 0.05
    binge = counts(1_000, 0.09, 16)
    assert abs(binge.mean() - reference.mean()) / reference.mean() < 0.2
    assert drift.psi(reference, binge) > 0.5
    # the zero mass is a bin of its own, the other values are split at their own quantiles
    edges = drift.quantile_edges(reference)
    assert edges[0] == 0.0 and edges[1] == np.nextafter(0.0, 1.0) and len(edges) > 5


def test_psi_edge_cases():
    assert np.isnan(drift.psi([], [1.0, 2.0])) and np.isnan(drift.psi([1.0], []))
    assert drift.psi([1.0] * 100, [1.0] * 50) == pytest.approx(0.0, abs=1e-12)  # a constant
    # values beyond the reference's range and missing values count
    reference = np.arange(1_000, dtype=float)
    assert drift.psi(reference, reference + 2_000) > 1.0
    with_nan = np.where(np.arange(1_000) % 4 == 0, np.nan, reference)
    assert drift.psi(reference, with_nan) > 0.2
    assert drift.effective_bins(137) == 5 and drift.effective_bins(10_000) == 10 and drift.effective_bins(3) == 2


def test_feature_windows_and_columns():
    assert drift.feature_window("plays_7d") == 7
    assert drift.feature_window("genre_share_28d__sci_fi") == 28
    assert drift.feature_window("play_rate_7d") == 7
    assert drift.feature_window("score") is None
    frame = pd.DataFrame({"date": ["d"], "user_id": [1], "history_days": [28], "plays_1d": [1],
                          "completion_rate_7d": [0.5], "flag": [True], "name": ["x"]})
    assert drift.numeric_features(frame) == ["plays_1d", "completion_rate_7d"]


def _features(day: str, n: int, history: int, rng, shift: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame({
        "date": day, "user_id": np.arange(n), "history_days": history,
        "plays_1d": rng.poisson(1.0 + shift, size=n), "watch_seconds_7d": rng.gamma(2.0, 100.0 * (1 + shift), size=n),
    })


def test_feature_drift_compares_only_full_history_reference_days():
    rng = np.random.default_rng(4)
    days = [f"2026-01-{d:02d}" for d in range(16, 30)]
    reference = pd.concat([_features(d, 400, min(28, 16 + k), rng) for k, d in enumerate(days)], ignore_index=True)
    rows = pd.DataFrame(drift.feature_drift("2026-01-30", "user_features", reference, _features("2026-01-30", 400, 28, rng)))
    # only 2026-01-28 and -29 have 28 days of history: fewer than the 3 needed, nothing is judged
    assert set(rows["status"]) == {drift.SKIPPED} and rows["psi"].isna().all()
    assert "2 reference day(s)" in rows["note"].iloc[0]
    rows = pd.DataFrame(drift.feature_drift("2026-01-30", "user_features", reference,
                                            _features("2026-01-30", 400, 28, rng), min_reference_days=2))
    assert set(rows["status"]) == {drift.COMPARED} and (rows["reference_days"] == 2).all()
    assert (rows["reference_rows"] == 800).all() and not rows["flagged"].any()
    shifted = pd.DataFrame(drift.feature_drift("2026-01-30", "user_features", reference,
                                               _features("2026-01-30", 400, 28, rng, shift=1.0), min_reference_days=2))
    assert shifted["flagged"].all() and (shifted["current_mean"] > shifted["reference_mean"]).all()
    table = drift.drift_table(shifted.to_dict("records"))
    summary = drift.summarize(table, drift.DEFAULT_PSI_THRESHOLD)
    assert summary.features_over_threshold == 2 and not summary.passed
    assert list(summary.offending) == sorted(summary.offending, key=lambda k: -summary.offending[k])
    from streamrec_assets.contracts import feature_drift_schema, validate

    assert validate(table, feature_drift_schema).passed


def test_score_drift():
    rng = np.random.default_rng(5)

    def recs(day, n, version, loc=0.0):
        return pd.DataFrame({"date": day, "score": rng.normal(loc, 1.0, size=n), "model_version": version})

    none = drift.score_drift("2026-01-08", None, recs("2026-01-08", 100, 0))
    assert none["status"] == drift.SKIPPED and "no champion" in none["note"]
    first = drift.score_drift("2026-01-08", recs("2026-01-07", 100, 0), recs("2026-01-08", 100, 3))
    assert first["status"] == drift.SKIPPED and "days before" in first["note"]
    reference = pd.concat([recs(f"2026-01-0{d}", 2_000, 3) for d in range(1, 8)])
    same = drift.score_drift("2026-01-08", reference, recs("2026-01-08", 2_000, 3))
    assert same["status"] == drift.COMPARED and same["psi"] < 0.05 and not same["flagged"] and same["note"] == ""
    moved = drift.score_drift("2026-01-08", reference, recs("2026-01-08", 2_000, 4, loc=1.0))
    assert moved["flagged"] and "versions" in moved["note"]


def test_alert_text_from_check_metadata():
    metadata = {
        "threshold": dg.MetadataValue.float(0.2),
        "features_over_threshold": dg.MetadataValue.int(2),
        "max_psi": dg.MetadataValue.float(0.64),
        "offending_features": dg.MetadataValue.json({"user_features.impressions_1d": 0.644,
                                                     "user_features.watch_seconds_1d": 0.238}),
        "score_psi": dg.MetadataValue.float(0.05),
    }
    title, details = drift.drift_alert_text(metadata, "2026-02-01")
    assert title == "feature_drift for 2026-02-01: 2 features drifted (PSI > 0.2)"
    assert details.splitlines()[0] == "user_features.impressions_1d PSI 0.644, user_features.watch_seconds_1d PSI 0.238"
    assert "champion score PSI 0.050" in details
    plain = {k: v.value for k, v in metadata.items()}
    assert drift.drift_alert_text(plain, "2026-02-01") == (title, details)

    assert drift.drift_run_alert([("2026-01-31", True, {}), (None, True, {})]) is None
    one_day_run = drift.drift_run_alert([(None, False, metadata)], run_partition="2026-02-01")
    assert one_day_run.title == title and one_day_run.partition == "2026-02-01"
    ranged = drift.drift_run_alert(
        [("2026-01-30", False, metadata), ("2026-01-31", True, {}), ("2026-02-01", False, metadata),
         (None, False, {**metadata, "failed_partitions": "2026-01-30, 2026-02-01"})],
        run_partition="2026-01-30..2026-02-01",
    )
    assert ranged.title.startswith("feature_drift for 2026-01-30..2026-02-01 (2 days): 2 features drifted")
    assert ranged.details.splitlines()[0].startswith("2026-01-30: user_features.impressions_1d PSI 0.644")


# --------------------------------------------------------------------------- generator


def test_default_generation_unchanged_and_drift_only_from_its_day(tmp_path):
    world = datagen.World.build(SEED, datagen.default_users(TINY_EVENTS), datagen.default_items(TINY_EVENTS))
    # pinned: the default generator's text of these days (before the drift option existed)
    pinned = {
        "2026-01-31": "01333b5db3e4012d716430398a6ed6df9f11fe25f6e65c54fd1f5cad33743f4c",
        "2026-02-01": "bc17832bcb3be01f2b398f4dd1c6455a15674e34b681e4ffba1677f73ac1eb14",
    }
    for day, digest in pinned.items():
        assert hashlib.sha256(gzip.decompress(datagen.generate_day(world, day, TINY_EVENTS, SEED))).hexdigest() == digest

    plain, drifted = tmp_path / "plain", tmp_path / "drifted"
    a = datagen.generate(str(plain), "2026-01-30", "2026-02-01", TINY_EVENTS, SEED)
    b = datagen.generate(str(drifted), "2026-01-30", "2026-02-01", TINY_EVENTS, SEED, drift_from="2026-01-31")
    assert [s["sha256"] for s in a[:1]] == [s["sha256"] for s in b[:1]]
    assert all(x["sha256"] != y["sha256"] for x, y in zip(a[1:], b[1:], strict=True))
    assert [s["records"] for s in a] == [s["records"] for s in b]  # the delivery contract is unchanged
    zp, zd = Landing(str(plain)), Landing(str(drifted))
    assert zp.read_marker("2026-01-30") == zd.read_marker("2026-01-30")
    assert "drift_from" not in zp.read_marker("2026-01-31").params
    assert zd.read_marker("2026-01-31").params["drift_from"] == "2026-01-31"
    # deterministic, and a rerun with the same scenario is served from the cache
    again = datagen.generate(str(drifted), "2026-01-30", "2026-02-01", TINY_EVENTS, SEED, drift_from="2026-01-31")
    assert all(s["skipped"] for s in again) and [s["sha256"] for s in again] == [s["sha256"] for s in b]
    # switching the scenario off regenerates exactly the drifted days, back to the default bytes
    back = datagen.generate(str(drifted), "2026-01-30", "2026-02-01", TINY_EVENTS, SEED)
    assert [s["skipped"] for s in back] == [True, False, False]
    assert [s["sha256"] for s in back] == [s["sha256"] for s in a]

    # the scenario: longer sessions, more of each play watched, a different genre mix
    def events(data: bytes) -> pd.DataFrame:
        return pd.DataFrame([json.loads(line) for line in gzip.decompress(data).decode().splitlines()])

    day = "2026-01-20"
    base = events(datagen.generate_day(world, day, 5_000, SEED, malformed_rate=0.0))
    shifted = events(datagen.generate_day(world, day, 5_000, SEED, malformed_rate=0.0, drift=datagen.DRIFT))
    assert shifted.groupby("session_id").size().mean() > 1.8 * base.groupby("session_id").size().mean()
    genre = world.items.set_index("item_id")["genre"]
    trend = set(datagen.DRIFT.trend_genres)
    share = {name: e["item_id"].map(genre).isin(trend).mean() for name, e in (("base", base), ("shifted", shifted))}
    assert share["shifted"] > share["base"] + 0.2


# --------------------------------------------------------------------------- the asset


def _assets():
    from streamrec_assets.assets.drift import feature_drift
    from streamrec_assets.definitions import all_assets

    registered = any(dg.AssetKey("feature_drift") in a.keys for a in all_assets if isinstance(a, dg.AssetsDefinition))
    return all_assets if registered else [*all_assets, feature_drift]


@pytest.fixture(scope="module")
def drift_run(tmp_path_factory):
    """32 days of tiny data whose last day drifts; features and feature_drift materialised in one range."""
    from streamrec_assets.definitions import build_resources

    root = tmp_path_factory.mktemp("drift")
    datagen.generate(str(root / "landing"), START, DRIFT_DAY, TINY_EVENTS, SEED, drift_from=DRIFT_DAY)
    settings = tiny_settings(root)
    selection = dg.AssetSelection.assets("user_features", "item_features").upstream() | dg.AssetSelection.assets(
        "feature_drift"
    )
    home = tmp_path_factory.mktemp("drift_home")
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        result = dg.materialize(
            _assets(),
            selection=selection,
            resources=build_resources(settings),
            instance=instance,
            tags={ASSET_PARTITION_RANGE_START_TAG: START, ASSET_PARTITION_RANGE_END_TAG: DRIFT_DAY},
        )
        yield settings, instance, result


@pytest.mark.slow  # materialises 20 days of tiny data
def test_psi_check_fails_on_the_drifted_day_only(drift_run):
    settings, instance, result = drift_run
    assert result.success  # the check warns, it never blocks
    evaluations = {
        e.partition: e for e in instance.all_logs(result.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        for e in [e.dagster_event.event_specific_data] if e.check_name == CHECK
    }
    normal, drifted = evaluations[NORMAL_DAY], evaluations[DRIFT_DAY]
    assert normal.passed and not drifted.passed
    assert drifted.severity == dg.AssetCheckSeverity.WARN and not drifted.blocking
    offending = drifted.metadata["offending_features"].value
    assert "user_features.impressions_1d" in offending and all(v > 0.2 for v in offending.values())
    assert drifted.metadata["features_over_threshold"].value == len(offending)
    assert normal.metadata["max_psi"].value < 0.15 < drifted.metadata["max_psi"].value
    # warm-up: before three reference days have 28 days of history nothing is judged, nothing fails
    early = evaluations["2026-01-27"]
    assert early.passed and early.metadata["features_compared"].value == 0

    # the stored table: one row per (day, table, feature), PSI and means, the flag
    from streamrec_assets.storage import TableStore, read_parquet

    table = read_parquet(TableStore(settings.storage_uri).partition_path("feature_drift", DRIFT_DAY))
    assert list(table.columns) == drift.DRIFT_COLUMNS
    assert set(table["table"]) == {"user_features", "item_features", drift.SCORE_TABLE}
    row = table.set_index(["table", "feature"]).loc[("user_features", "impressions_1d")]
    assert row["flagged"] and row["psi"] > 0.3 and row["reference_days"] == 4
    assert sorted(f"{t}.{f}" for t, f in table.loc[table["flagged"], ["table", "feature"]].to_numpy()) == sorted(offending)
    score = table[table["table"] == drift.SCORE_TABLE].iloc[0]
    assert score["status"] == drift.SKIPPED and "no batch_recommendations" in score["note"]

    # per-partition numeric metadata, so the UI plots it
    records = instance.fetch_materializations(dg.AssetKey("feature_drift"), limit=20).records
    by_day = {r.partition_key: r.asset_materialization.metadata for r in records}
    assert by_day[DRIFT_DAY]["features_over_threshold"].value == len(offending)
    assert isinstance(by_day[NORMAL_DAY]["max_psi"].value, float)
    assert by_day[NORMAL_DAY]["features_over_threshold"].value == 0

    # what the P2 alert sensor sends for this run
    alert = drift.drift_run_alert(
        (e.partition, e.passed, e.metadata) for e in
        (r.dagster_event.event_specific_data for r in
         instance.all_logs(result.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION))
        if e.check_name == CHECK
    )
    assert alert.partition == DRIFT_DAY and alert.title.startswith(f"feature_drift for {DRIFT_DAY}: ")
    assert "user_features.impressions_1d PSI" in alert.details
