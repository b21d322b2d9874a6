"""TLS policy of an NBD server connection, and what it does to each option.

Job: decide, as data, how the machine treats an option given the server's
TLS policy and whether TLS is active on the connection (NBD doc/proto.md,
"TLS support"). The machine asks `gate()`; the tables below are the rules.

Rules:
- Three policies, one per connection and fixed for its life (the spec's
  modes): OFF is NOTLS (STARTTLS refused with NBD_REP_ERR_POLICY: we know the
  option, the operator did not enable TLS; NBD_REP_ERR_TLS_REQD is never
  sent); OPTIONAL is SELECTIVETLS (STARTTLS accepted, plain clients served,
  the application refuses TLS-only exports itself); REQUIRE is FORCEDTLS.
- Before TLS under REQUIRE every option but STARTTLS and ABORT is answered
  NBD_REP_ERR_TLS_REQD; NBD_OPT_EXPORT_NAME cannot carry an error, so the
  session ends. Once TLS is active no option gets NBD_REP_ERR_TLS_REQD, and
  a second STARTTLS is NBD_REP_ERR_INVALID.
- Pure data and one lookup function: no state, no I/O.
"""

from __future__ import annotations

import enum

from vdfarm.nbd import constants as c


class TLSPolicy(enum.Enum):
    """Server-wide TLS mode; `TLSPolicy("require")` parses a setting."""

    OFF = "off"
    OPTIONAL = "optional"
    REQUIRE = "require"


class Gate(enum.Enum):
    """What the machine does with an option before looking at its data."""

    SERVE = "serve"  # handle the option as usual
    START = "start"  # STARTTLS accepted: queue NBD_REP_ACK, emit StartTLS
    REFUSE_POLICY = "refuse_policy"  # STARTTLS with TLS off: NBD_REP_ERR_POLICY
    REFUSE_AGAIN = "refuse_again"  # STARTTLS with TLS active: NBD_REP_ERR_INVALID
    TLS_REQUIRED = "tls_required"  # NBD_REP_ERR_TLS_REQD, haggling goes on
    CLOSE = "close"  # EXPORT_NAME before TLS under REQUIRE: end the session


P = TLSPolicy

# NBD_OPT_STARTTLS (with no data; data is NBD_REP_ERR_INVALID whatever the
# policy), by (policy, TLS active). (OFF, True) cannot happen.
STARTTLS_GATE: dict[tuple[TLSPolicy, bool], Gate] = {
    (P.OFF, False): Gate.REFUSE_POLICY,
    (P.OPTIONAL, False): Gate.START,
    (P.OPTIONAL, True): Gate.REFUSE_AGAIN,
    (P.REQUIRE, False): Gate.START,
    (P.REQUIRE, True): Gate.REFUSE_AGAIN,
}

# Every other option under REQUIRE before TLS; an option not listed gets
# TLS_REQUIRED (unknown options included: the spec says "any other option").
BEFORE_TLS_REQUIRED: dict[int, Gate] = {
    c.OPT_ABORT: Gate.SERVE,
    c.OPT_EXPORT_NAME: Gate.CLOSE,
}


def gate(policy: TLSPolicy, tls_active: bool, option: int) -> Gate:
    """How an option is treated under `policy` with TLS active or not."""
    if option == c.OPT_STARTTLS:
        return STARTTLS_GATE[policy, tls_active]
    if policy is P.REQUIRE and not tls_active:
        return BEFORE_TLS_REQUIRED.get(option, Gate.TLS_REQUIRED)
    return Gate.SERVE
