"""Resources: the landing zone the pipeline reads from (local directory or S3)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

if TYPE_CHECKING:
    import pandas as pd
    from upath import UPath


class LandingZone(dg.ConfigurableResource):
    """The upstream export: one JSON Lines file per day plus a completion marker, and catalogues.

    Layout (written by ``streamrec generate`` or the real upstream export)::

        <uri>/events/date=YYYY-MM-DD/events-YYYY-MM-DD.jsonl.gz
        <uri>/events/date=YYYY-MM-DD/_SUCCESS
        <uri>/catalog/users.parquet, <uri>/catalog/items.parquet
    """

    uri: str = Field(description="Root of the landing zone: a local directory or s3://bucket/prefix.")
    s3_endpoint_url: str = Field(default="", description="Endpoint of an S3-compatible store.")

    def _path(self, location: str) -> UPath:
        from upath import UPath

        if "://" in location and self.s3_endpoint_url:
            return UPath(location, client_kwargs={"endpoint_url": self.s3_endpoint_url})
        return UPath(location)

    def events_path(self, day: str) -> UPath:
        from streamrec_assets import datagen

        return self._path(datagen.events_path(self.uri, day))

    def marker_path(self, day: str) -> UPath:
        from streamrec_assets import datagen

        return self._path(datagen.marker_path(self.uri, day))

    def is_complete(self, day: str) -> bool:
        """True when the day's file and its completion marker are both present."""
        return self.marker_path(day).exists() and self.events_path(day).exists()

    def read_events(self, day: str) -> bytes:
        events = self.events_path(day)
        if not self.marker_path(day).exists():
            state = "has no completion marker yet" if events.exists() else "has not been delivered"
            raise FileNotFoundError(
                f"Landing day {day} {state}: expected {events} and its _SUCCESS marker under {self.uri}. "
                f"Generate it with `streamrec generate --start {day} --end {day}`."
            )
        return events.read_bytes()

    def read_catalog(self, name: str) -> pd.DataFrame:
        """``name`` is ``users`` or ``items``."""
        import pyarrow.parquet as pq

        from streamrec_assets import datagen

        location = {"users": datagen.users_path, "items": datagen.items_path}[name](self.uri)
        path = self._path(location)
        if not path.exists():
            raise FileNotFoundError(
                f"The {name} catalogue is missing from the landing zone ({path}); "
                f"`streamrec generate` writes it."
            )
        with path.open("rb") as handle:
            return pq.read_table(handle).to_pandas()
