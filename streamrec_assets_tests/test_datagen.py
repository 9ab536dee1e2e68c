"""Unit tests for the synthetic StreamRec generator and the ``streamrec generate`` CLI."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from streamrec_assets import datagen as dg
from streamrec_assets.cli import main
from streamrec_assets.landing import Landing

SEED = 7
N = 50_000
DAY = "2026-03-01"
FIELDS = {
    "event_id": str,
    "user_id": int,
    "item_id": int,
    "event_type": str,
    "event_timestamp": str,
    "watch_seconds": float,
    "device": str,
    "session_id": str,
}


@pytest.fixture(scope="module")
def world() -> dg.World:
    return dg.World.build(SEED, dg.default_users(N), dg.default_items(N))


@pytest.fixture(scope="module")
def day_bytes(world) -> bytes:
    return dg.generate_day(world, DAY, N, SEED)


@pytest.fixture(scope="module")
def lines(day_bytes) -> list[str]:
    return gzip.decompress(day_bytes).decode().splitlines()


def _parse_ts(raw: str) -> datetime:
    assert raw.endswith("Z") and len(raw) == 24, raw
    return datetime.strptime(raw, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _valid(rec, world: dg.World, day: str) -> bool:
    """The checks the ingest is expected to make."""
    if not isinstance(rec, dict) or set(rec) != set(FIELDS):
        return False
    for k, t in FIELDS.items():
        if not isinstance(rec[k], t) or isinstance(rec[k], bool):
            return False
    if not (1 <= rec["user_id"] <= world.n_users and 1 <= rec["item_id"] <= world.n_items):
        return False
    if rec["watch_seconds"] < 0 or rec["event_type"] not in ("impression", "play"):
        return False
    return rec["event_timestamp"][:10] == day


def _records(lines: list[str]) -> list:
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append(None)
    return out


@pytest.fixture(scope="module")
def frame(lines, world) -> pd.DataFrame:
    """Valid, de-duplicated events with their hidden affinity."""
    recs = [r for r in _records(lines) if _valid(r, world, DAY)]
    df = pd.DataFrame(recs).drop_duplicates("event_id")
    df["affinity"] = world.affinity(df["user_id"].to_numpy(), df["item_id"].to_numpy())
    return df


# --------------------------------------------------------------------------- world


def test_world_catalogue_schema_and_determinism(world):
    again = dg.World.build(SEED, world.n_users, world.n_items)
    pd.testing.assert_frame_equal(world.users, again.users)
    pd.testing.assert_frame_equal(world.items, again.items)
    assert list(world.users.columns) == ["user_id", "signup_date", "country"]
    assert list(world.items.columns) == ["item_id", "genre", "duration_seconds", "release_date"]
    assert world.users["user_id"].dtype == np.int64 and world.items["item_id"].dtype == np.int64
    assert world.items["duration_seconds"].between(20 * 60, 180 * 60).all()
    assert world.items["genre"].nunique() == 15
    assert world.users["country"].nunique() == 10
    for col in (world.users["signup_date"], world.items["release_date"]):
        pd.to_datetime(col, format="%Y-%m-%d")  # raises if not YYYY-MM-DD
    released_before_2026 = (world.items["release_date"] < "2026-01-01").mean()
    assert 0.6 < released_before_2026 < 0.8
    assert world.items["release_date"].max() <= "2027-12-31"
    assert (world.users["signup_date"] >= "2026-01-01").any()
    other = dg.World.build(SEED + 1, world.n_users, world.n_items)
    assert not world.items.equals(other.items)


def test_oracle_api(world):
    users = np.array([1, 2, 3])
    items = np.array([5, 6, 7])
    aff = world.affinity(users, items)
    assert aff.shape == (3,) and aff.dtype == float
    scores = world.oracle_scores(2, items)
    assert scores[1] == pytest.approx(aff[1])
    assert world.oracle_scores(1, np.arange(1, world.n_items + 1)).shape == (world.n_items,)
    with pytest.raises(ValueError):
        world.affinity(np.array([world.n_users + 1]), np.array([1]))


# --------------------------------------------------------------------------- one day


def test_same_bytes_twice(world, day_bytes):
    assert dg.generate_day(world, DAY, N, SEED) == day_bytes
    assert dg.generate_day(world, DAY, N, SEED + 1) != day_bytes
    assert dg.generate_day(world, "2026-03-02", N, SEED) != day_bytes
    # gzip header is stable: mtime 0 and no file name flag
    assert day_bytes[:2] == b"\x1f\x8b" and day_bytes[4:8] == b"\x00\x00\x00\x00"
    assert day_bytes[3] & 0x08 == 0


def test_exact_line_count(lines):
    assert len(lines) == N


def test_valid_lines_fields_and_types(lines, world, frame):
    n_valid = len(frame)
    assert n_valid > 0.99 * N
    for rec in frame.head(2000).to_dict("records"):
        assert rec["event_id"].startswith("ev-20260301-")
        assert rec["session_id"]
        assert rec["device"] in {"tv", "mobile", "web", "tablet"}
    imp = frame[frame["event_type"] == "impression"]
    play = frame[frame["event_type"] == "play"]
    assert (imp["watch_seconds"] == 0).all()
    assert (play["watch_seconds"] > 0).all()
    dur = world.items.set_index("item_id")["duration_seconds"]
    assert (play["watch_seconds"].to_numpy() <= dur.loc[play["item_id"]].to_numpy()).all()
    # event ids are unique among valid lines (once duplicates are dropped)
    assert frame["event_id"].is_unique


def test_timestamps_inside_day_and_sorted(lines, world):
    start = datetime.fromisoformat(DAY).replace(tzinfo=UTC)
    end = start + timedelta(days=1)
    stamps = []
    for rec in _records(lines):
        if _valid(rec, world, DAY):
            ts = _parse_ts(rec["event_timestamp"])
            assert start <= ts < end
            stamps.append(rec["event_timestamp"])
    assert stamps == sorted(stamps)
    hours = pd.Series([int(s[11:13]) for s in stamps]).value_counts()
    assert hours.loc[[19, 20, 21]].mean() > 3 * hours.loc[[3, 4, 5]].mean()  # evening peak


def test_malformed_and_duplicate_shares(lines, world):
    recs = _records(lines)
    bad = sum(1 for r in recs if not _valid(r, world, DAY))
    assert bad / len(lines) == pytest.approx(0.002, abs=0.0005)
    valid_ids = [r["event_id"] for r in recs if _valid(r, world, DAY)]
    dups = len(valid_ids) - len(set(valid_ids))
    assert dups / len(lines) == pytest.approx(0.0005, abs=0.0003)
    # each category of dirt is present
    assert any(r is None for r in recs)  # truncated JSON
    assert any(isinstance(r, dict) and set(r) < set(FIELDS) for r in recs)
    assert any(
        isinstance(r, dict) and isinstance(r.get("watch_seconds"), float) and r["watch_seconds"] < 0
        for r in recs
    )
    assert any(isinstance(r, dict) and r.get("user_id", 0) > world.n_users for r in recs)
    assert any(isinstance(r, dict) and r.get("item_id", 0) > world.n_items for r in recs)
    assert any(
        isinstance(r, dict) and "event_timestamp" in r and r["event_timestamp"][:10] != DAY for r in recs
    )


def test_clean_when_rate_zero(world):
    raw = dg.generate_day(world, DAY, 5_000, SEED, malformed_rate=0.0)
    recs = _records(gzip.decompress(raw).decode().splitlines())
    assert len(recs) == 5_000
    assert all(_valid(r, world, DAY) for r in recs)
    assert len({r["event_id"] for r in recs}) == 5_000


def test_play_preceded_by_impression(frame):
    seen: dict[tuple, str] = {}
    plays = 0
    for rec in frame.to_dict("records"):
        key = (rec["user_id"], rec["item_id"], rec["session_id"])
        if rec["event_type"] == "impression":
            seen[key] = rec["event_timestamp"]  # latest impression of the pair
        else:
            plays += 1
            assert key in seen, rec
            assert seen[key] < rec["event_timestamp"]
            t_imp, t_play = _parse_ts(seen[key]), _parse_ts(rec["event_timestamp"])
            assert t_play - t_imp < timedelta(minutes=5)
    assert plays > 0.15 * len(frame)


def test_zipf_like_popularity(frame, world):
    counts = frame.loc[frame["event_type"] == "impression", "item_id"].value_counts()
    top = counts.iloc[: max(1, world.n_items // 10)].sum() / counts.sum()
    assert top > 0.4


def test_plays_and_completion_follow_affinity(frame, world):
    imp = frame[frame["event_type"] == "impression"]
    play = frame[frame["event_type"] == "play"]
    played = set(zip(play["user_id"], play["item_id"], play["session_id"], strict=True))
    mask = np.array(
        [k in played for k in zip(imp["user_id"], imp["item_id"], imp["session_id"], strict=True)]
    )
    assert imp["affinity"][mask].mean() > imp["affinity"][~mask].mean() + 0.5
    dur = world.items.set_index("item_id")["duration_seconds"].loc[play["item_id"]].to_numpy()
    completed = play["watch_seconds"].to_numpy() >= 0.9 * dur
    assert 0.05 < completed.mean() < 0.8
    assert play["affinity"][completed].mean() > play["affinity"][~completed].mean()


def test_items_only_after_release_and_users_after_signup(world):
    day = "2026-06-15"
    recs = _records(gzip.decompress(dg.generate_day(world, day, 20_000, SEED)).decode().splitlines())
    df = pd.DataFrame([r for r in recs if _valid(r, world, day)])
    release = world.items.set_index("item_id")["release_date"]
    signup = world.users.set_index("user_id")["signup_date"]
    assert (release.loc[df["item_id"]].to_numpy() <= day).all()
    assert (signup.loc[df["user_id"]].to_numpy() <= day).all()
    # items released in 2026 do show up once released
    new_items = release[(release >= "2026-01-01") & (release <= day)].index
    assert df["item_id"].isin(new_items).any()
    early = _records(gzip.decompress(dg.generate_day(world, "2026-01-02", 5_000, SEED)).decode().splitlines())
    early_items = {r["item_id"] for r in early if _valid(r, world, "2026-01-02")}
    assert all(release.loc[i] <= "2026-01-02" for i in early_items)


# --------------------------------------------------------------------------- landing zone + CLI


def _args(landing, *extra):
    return [
        "generate",
        "--start",
        "2026-01-01",
        "--end",
        "2026-01-03",
        "--events-per-day",
        "2000",
        "--landing",
        str(landing),
        *extra,
    ]


def test_paths():
    assert str(Landing("/l").events_path("2026-01-01")) == "/l/events/date=2026-01-01/events-2026-01-01.jsonl.gz"
    assert str(Landing("s3://b/l/").marker_path("2026-01-01")) == "s3://b/l/events/date=2026-01-01/_SUCCESS"
    assert str(Landing("/l").catalog_path("users")) == "/l/catalog/users.parquet"
    assert str(Landing("/l").catalog_path("items")) == "/l/catalog/items.parquet"


def test_cli_writes_files_and_markers(tmp_path, capsys):
    landing = tmp_path / "landing"
    assert main(_args(landing)) == 0
    out = capsys.readouterr().out
    assert "2026-01-02" in out and "total" in out
    users = pd.read_parquet(Landing(str(landing)).catalog_path("users").path)
    items = pd.read_parquet(Landing(str(landing)).catalog_path("items").path)
    assert list(users.columns) == ["user_id", "signup_date", "country"] and len(users) == 500
    assert (
        list(items.columns) == ["item_id", "genre", "duration_seconds", "release_date"] and len(items) == 200
    )
    for day in ("2026-01-01", "2026-01-02", "2026-01-03"):
        data = Landing(str(landing)).events_path(day).read_bytes()
        marker = json.loads(Landing(str(landing)).marker_path(day).read_bytes())
        assert marker["date"] == day
        assert marker["sha256"] == hashlib.sha256(data).hexdigest()
        assert marker["records"] == len(gzip.decompress(data).splitlines()) == 2000
        assert marker["params"]["seed"] == 7 and marker["params"]["events_per_day"] == 2000
    assert not [p for p in landing.rglob("*") if p.name.endswith(".tmp")]


def test_day_independent_of_range(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(_args(a)) == 0
    assert (
        main(
            [
                "generate",
                "--start",
                "2026-01-02",
                "--end",
                "2026-01-02",
                "--events-per-day",
                "2000",
                "--landing",
                str(b),
            ]
        )
        == 0
    )
    day = "2026-01-02"
    za, zb = Landing(str(a)), Landing(str(b))
    assert za.events_path(day).read_bytes() == zb.events_path(day).read_bytes()
    assert za.catalog_path("users").read_bytes() == zb.catalog_path("users").read_bytes()


def test_rerun_skips_and_force_regenerates(tmp_path, capsys):
    landing = tmp_path / "landing"
    assert main(_args(landing)) == 0
    path = str(Landing(str(landing)).events_path("2026-01-01"))
    mtime = os.stat(path).st_mtime_ns
    capsys.readouterr()

    res = dg.generate(str(landing), "2026-01-01", "2026-01-03", 2000, 7)
    assert all(r["skipped"] for r in res) and [r["records"] for r in res] == [2000] * 3
    assert main(_args(landing)) == 0
    assert "cached" in capsys.readouterr().out
    assert os.stat(path).st_mtime_ns == mtime

    res = dg.generate(str(landing), "2026-01-01", "2026-01-03", 2000, 7, force=True)
    assert not any(r["skipped"] for r in res)
    # changed parameters invalidate the cache
    res = dg.generate(str(landing), "2026-01-01", "2026-01-01", 2000, 8)
    assert not res[0]["skipped"]
    assert json.loads(open(str(Landing(str(landing)).marker_path("2026-01-01"))).read())["params"]["seed"] == 8
    # a missing data file with a present marker is regenerated
    os.unlink(str(Landing(str(landing)).events_path("2026-01-02")))
    res = dg.generate(str(landing), "2026-01-02", "2026-01-02", 2000, 7)
    assert not res[0]["skipped"] and os.path.exists(str(Landing(str(landing)).events_path("2026-01-02")))


def test_cli_default_landing_and_bad_range(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STREAMREC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("STREAMREC_LANDING_URI", raising=False)
    assert main(["generate", "--start", "2026-01-01", "--end", "2026-01-01", "--events-per-day", "500"]) == 0
    assert (tmp_path / "home" / "landing" / "events" / "date=2026-01-01" / "_SUCCESS").exists()
    with pytest.raises(SystemExit):
        main(["generate", "--start", "2026-01-02", "--end", "2026-01-01"])
    with pytest.raises(SystemExit):
        main(["generate", "--start", "2026-13-01", "--end", "2026-01-01"])


def test_upath_write_helper(tmp_path):
    from streamrec_assets.storage import read_bytes, storage_path, write_bytes

    uri = f"file://{tmp_path}/x/y.bin"
    write_bytes(b"abc", storage_path(uri))
    assert (tmp_path / "x" / "y.bin").read_bytes() == b"abc"
    assert read_bytes(storage_path(uri)) == b"abc"
    assert read_bytes(storage_path(f"file://{tmp_path}/missing")) is None
