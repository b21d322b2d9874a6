"""Intents: a row that says a change of a vDisk's files is under way.

Rules:
- Merge and the seal of a promote change this server's store and then the
  database. They record an intent first (one `vdisk_intents` row, committed
  in a short transaction that also makes every check), do the slow file
  work with no transaction open, then apply the result and delete the
  intent in one second transaction. The database is the source of truth,
  so the intent lives there, not in a journal file beside the vDisk.
- While an intent exists, the vDisk's versions, mode and lock do not change:
  every service that would change them calls `check_no_intent` in its
  transaction (after locking the vDisk row) and gets a Conflict naming the
  step, its server and the repair command.
- An intent left behind (the database failed, or the process died) is a
  half-done step: `RepairService` completes or rolls it back.
- The plan is JSON text: what the step needs to finish without the caller.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from vdfarm.farm.models import Vdisk, VdiskIntent
from vdfarm.service.errors import Conflict

MERGE, SEAL = "merge", "seal"
_DOING = {MERGE: "merged", SEAL: "sealed (promoted)"}


def intent_of(session: Session, vdisk_id: int) -> VdiskIntent | None:
    """The intent on vDisk VDISK_ID, if any (fresh from the database)."""
    query = select(VdiskIntent).where(VdiskIntent.vdisk_id == vdisk_id)
    return session.scalars(query.execution_options(populate_existing=True)).one_or_none()


def intent_message(vdisk_name: str, intent: VdiskIntent) -> str:
    """'vDisk X is being merged on server S since T (...repair...)'."""
    server = intent.server.name if intent.server else "?"
    return (
        f"vDisk {vdisk_name} is being {_DOING.get(intent.kind, intent.kind)} on server "
        f"{server} since {intent.started_at.isoformat()}; if that step was cut short, "
        f"run vdfarm vdisk repair {vdisk_name} there"
    )


def check_no_intent(session: Session, vdisk: Vdisk) -> None:
    """Refuse a change of VDISK while a merge or seal of it is under way.

    Raises Conflict.
    """
    intent = intent_of(session, vdisk.id)
    if intent is not None:
        raise Conflict(intent_message(vdisk.name, intent))


def record_intent(
    session: Session, vdisk: Vdisk, server_id: int, kind: str, plan: dict[str, Any], now: datetime
) -> VdiskIntent:
    """Add the intent of KIND with PLAN on VDISK (this server's store) to the
    session's transaction; the caller commits it before the file work.

    Raises Conflict (an intent exists already).
    """
    check_no_intent(session, vdisk)
    intent = VdiskIntent(
        vdisk_id=vdisk.id,
        server_id=server_id,
        kind=kind,
        plan=json.dumps(plan, sort_keys=True),
        started_at=now,
    )
    session.add(intent)
    session.flush()
    return intent


def plan_of(intent: VdiskIntent) -> dict[str, Any]:
    """The intent's plan as a dict."""
    plan = json.loads(intent.plan)
    if not isinstance(plan, dict):
        raise ValueError(f"intent {intent.id} has a plan that is not an object")
    return plan


def take_intent(session: Session, vdisk: Vdisk, intent_id: int) -> VdiskIntent:
    """The intent INTENT_ID on VDISK, to finish in this transaction.

    Raises Conflict (it is gone or replaced: someone repaired the step).
    """
    intent = intent_of(session, vdisk.id)
    if intent is None or intent.id != intent_id:
        raise Conflict(
            f"the change of vDisk {vdisk.name} was completed or rolled back by a repair "
            f"meanwhile; check it with vdfarm vdisk verify {vdisk.name}"
        )
    return intent


def drop_intent(session: Session, vdisk_id: int, intent_id: int) -> None:
    """Delete intent INTENT_ID of VDISK_ID if it is still there."""
    intent = intent_of(session, vdisk_id)
    if intent is not None and intent.id == intent_id:
        session.delete(intent)
