"""/tokens: add, list, revoke the farm's API tokens (like `vdfarm token …`).

Rules: admin only (`roles.MINIMAL_ROLE`). The secret of a new token is in
the answer of POST /tokens and nowhere else; GET never shows a secret or
its hash. Revoking takes effect on every server at its next request.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from vdfarm.api.deps import ActorDep, FarmDep, make_router
from vdfarm.farm.models import TOKEN_ROLES
from vdfarm.service.tokens import NewToken, TokenInfo

router = make_router("tokens")

Role = Literal[TOKEN_ROLES]  # type: ignore[valid-type]


class TokenCreate(BaseModel):
    """A new token's name and role."""

    model_config = ConfigDict(extra="forbid")

    name: str
    role: Role


@router.get("/tokens", response_model=list[TokenInfo])
def list_tokens(farm: FarmDep) -> list[TokenInfo]:
    """Every token, revoked ones too, by name (never a secret)."""
    return farm.tokens.list()


@router.post("/tokens", response_model=NewToken, status_code=201)
def add_token(body: TokenCreate, farm: FarmDep, actor: ActorDep) -> NewToken:
    """Make a token; the answer holds its secret, shown this once."""
    return farm.tokens.add(body.name, body.role, actor=actor)


@router.post("/tokens/{name}/revoke", response_model=TokenInfo)
def revoke_token(name: str, farm: FarmDep, actor: ActorDep) -> TokenInfo:
    """Revoke token NAME; answers it revoked."""
    return farm.tokens.revoke(name, actor=actor)
