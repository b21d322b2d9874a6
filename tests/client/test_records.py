"""`from_plain`: service records rebuilt from their JSON, the inverse of `to_plain`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from vdfarm.client.records import from_plain
from vdfarm.farm.rebalance import Move
from vdfarm.service.merges import ExportResult, MergeResult
from vdfarm.service.moves import RebalanceResult
from vdfarm.service.records import to_plain
from vdfarm.service.versions import PromoteResult, VersionInfo

AT = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def round_trip(value):
    return from_plain(type(value), json.loads(json.dumps(to_plain(value))))


VERSION = VersionInfo(
    vdisk="w",
    number=1,
    access="pending",
    parent=0,
    file="w.1.qcow2",
    format="qcow2",
    size=None,
    sha256=None,
    created_at=AT,
    sealed_at=None,
    production_at=AT,
    devices=("pc1", "pc2"),
    boots=("test",),
)


@pytest.mark.parametrize(
    "value",
    [
        VERSION,
        PromoteResult(
            version=VERSION,
            merge_skipped="no",
            merged=MergeResult(
                vdisk="w",
                kept=2,
                base=0,
                new_base=False,
                removed=(1,),
                deleted=("a",),
                retained=(),
                automatic=True,
            ),
        ),
        PromoteResult(version=VERSION, merged=None, merge_skipped=None),
        ExportResult(vdisk="w", version=0, format="qcow2", path=Path("/x/out.qcow2"), size=5),
        RebalanceResult(
            moves=(Move(1, "pc1", "a", "b", 1, 2),),
            average=1.5,
            trigger_pct=25.0,
            auto=False,
            applied=True,
        ),
    ],
    ids=lambda v: type(v).__name__,
)
def test_round_trip_gives_the_same_record(value):
    assert round_trip(value) == value


def test_zulu_times_and_unknown_keys():
    plain = to_plain(VERSION) | {"created_at": "2030-01-01T12:00:00Z", "new_field": 1}
    assert from_plain(VersionInfo, plain) == VERSION


@dataclass(frozen=True)
class WithDefault:
    name: str
    count: int = 3


def test_missing_keys_take_the_default_or_fail():
    assert from_plain(WithDefault, {"name": "x"}) == WithDefault("x", 3)
    with pytest.raises(ValueError, match="WithDefault without name"):
        from_plain(WithDefault, {"count": 1})


@pytest.mark.parametrize(
    "data",
    [
        [],
        "text",
        to_plain(VERSION) | {"created_at": "yesterday"},
        to_plain(VERSION) | {"devices": "pc1"},
    ],
)
def test_wrong_shapes_raise_value_error(data):
    with pytest.raises(ValueError):
        from_plain(VersionInfo, data)
