"""Two real runs on one instance at once: one materialising the feature store, one reading it.

The writer run (``feast_feature_views``) is held inside Feast's materialisation, while its views
are committed as MATERIALIZING in the registry; the reader run (``training_examples``: the offline
point-in-time read, and ``batch_recommendations``: online reads) executes meanwhile and must
succeed with the same values it produces alone.
"""

from __future__ import annotations

import threading

import dagster as dg
import pandas as pd
import pytest
from feast.infra.passthrough_provider import PassthroughProvider

from streamrec_assets.storage import TableStore
from streamrec_assets_tests.conftest import END, run_range

pytestmark = pytest.mark.slow
DAY = "2026-01-31"


def _stored(settings, asset: str, day: str) -> pd.DataFrame:
    return TableStore(settings.storage_uri).reader(asset, [day]).read(day)


def test_reader_run_succeeds_while_another_run_materialises(graph_32, monkeypatch):
    from feast.feature_view import FeatureViewState

    from streamrec_assets.definitions import build_resources

    settings, instance, _ = graph_32
    before = {(a, d): _stored(settings, a, d) for a, d in (("training_examples", DAY), ("batch_recommendations", END))}
    entered, release, outcome = threading.Event(), threading.Event(), {}
    original = PassthroughProvider.materialize_single_feature_view

    def held(self, config, feature_view, *args, **kwargs):
        if threading.current_thread().name == "writer" and not entered.is_set():
            entered.set()  # Feast has committed this view as MATERIALIZING before calling us
            release.wait(120)
        return original(self, config, feature_view, *args, **kwargs)

    monkeypatch.setattr(PassthroughProvider, "materialize_single_feature_view", held)

    def writer():
        try:
            outcome["writer"] = run_range(settings, instance, "2026-01-25", END, selection="feast_feature_views",
                                          raise_on_error=False)
        finally:
            entered.set()

    thread = threading.Thread(target=writer, name="writer")
    thread.start()
    try:
        assert entered.wait(300), "the writer run never reached Feast's materialisation"
        assert thread.is_alive(), "the writer run is held mid-materialisation"
        store = build_resources(settings)["feast"].store()
        states = {fv.name: fv.state for fv in store.registry.list_feature_views(store.project, allow_cache=False)}
        assert FeatureViewState.MATERIALIZING in states.values(), states
        reader = run_range(settings, instance, DAY, DAY, selection="training_examples", raise_on_error=False)
        serving = run_range(settings, instance, END, END, selection="batch_recommendations", raise_on_error=False)
    finally:
        release.set()
        thread.join(300)
    assert reader.success, [e.message for e in reader.all_events if e.is_failure]
    assert serving.success, [e.message for e in serving.all_events if e.is_failure]
    assert outcome["writer"].success
    # The concurrent reads saw exactly what they see alone.
    for (asset, day), frame in before.items():
        pd.testing.assert_frame_equal(_stored(settings, asset, day), frame, check_like=True)
    runs = {r.run_id: r.status for r in instance.get_runs(limit=3)}
    assert set(runs.values()) == {dg.DagsterRunStatus.SUCCESS}
