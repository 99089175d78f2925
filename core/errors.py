"""Error vocabulary shared by the API, workflows and activities.

Workflows fail updates with `ApplicationError(type=...)` using these constants, and the API maps
them back to HTTP errors, so the same word means the same thing everywhere.
"""

from __future__ import annotations


class ErrorType:
    """`ApplicationError.type` values raised by workflows and activities."""

    ILLEGAL_TRANSITION = "IllegalTransition"
    ATTEMPT_IN_FLIGHT = "AttemptInFlight"
    NETWORK_UNAVAILABLE = "NetworkUnavailable"
    NETWORK_REJECTED_REQUEST = "NetworkRejectedRequest"
    VAULT_TOKEN_MISSING = "VaultTokenMissing"
    # A capture or refund amount beyond what the payment allows (API: 400, param amountInCents).
    AMOUNT_INVALID = "AmountInvalid"
    # The database will never accept this write (an illegal state change, a row that does not
    # exist): not retried, and surfaced to operators (manual review) instead.
    RECORD_REFUSED = "RecordRefused"
    # An operator's manual-review verdict that the network's own answer contradicts.
    VERDICT_CONTRADICTS_NETWORK = "VerdictContradictsNetwork"


class IllegalTransition(Exception):
    """A state change that the state machine does not allow."""

    def __init__(self, kind: str, current: str, action: str) -> None:
        super().__init__(f"cannot {action} a {kind} in status {current}")
        self.kind = kind
        self.current = current
        self.action = action
