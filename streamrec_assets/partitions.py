"""Partition definitions shared by every asset.

A partition key is the *logical date* of the data (the UTC day the events
happened), never the wall-clock time of the run that processes it.
"""

from __future__ import annotations

import warnings

import dagster as dg

from streamrec_assets.core.features import WINDOWS
from streamrec_assets.settings import get_settings

#: The longest rolling feature window (core.features.WINDOWS) sets the upstream window.
LONGEST_WINDOW_DAYS = max(WINDOWS)

daily_partitions = dg.DailyPartitionsDefinition(
    start_date=get_settings().start_date,
    timezone="UTC",
    fmt="%Y-%m-%d",
)

#: Maps day D of a feature asset to the daily aggregates of [D-27, D].
#: Dagster clips the window at the first partition (start of history).
feature_window_mapping = dg.TimeWindowPartitionMapping(start_offset=-(LONGEST_WINDOW_DAYS - 1), end_offset=0)

#: Every partitioned asset processes a requested range in one run.
single_run = dg.BackfillPolicy.single_run()
# backfill_policy is a deliberate, pinned (dagster==1.13.27) choice; keep its beta notice out of every load.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=dg.BetaWarning)

#: Day D depends on day D-1 (e.g. training examples of D use features known at the start of D).
previous_day_mapping = dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1)
