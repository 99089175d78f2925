"""The card-network adapter: the only code that sends card data to the network.

The PAN is read from the vault and decrypted here, inside the activity, so it never enters a
workflow's input, result or history. Every call carries the transaction id as the network
reference, so a retry of this activity can never charge twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity
from temporalio.exceptions import ApplicationError

from core.crypto import CardNumberDeleted, Cipher, VaultCipher
from core.db.payment_records import driver_connection
from core.domain import NetworkOutcome
from core.errors import ErrorType
from core.keyring import Purpose
from core.metrics import STATUS_QUERIES


@dataclass
class AuthorizeInput:
    network_reference: str
    card_token_id: str
    amount_in_cents: int
    currency: str
    # Manual capture asks the network to authorize only; automatic charges at once.
    capture: bool


@dataclass
class OperationRequest:
    """A capture, void or refund: acts on an earlier operation's reference, carries no card."""

    network_reference: str
    parent_reference: str
    amount_in_cents: int
    currency: str


@dataclass
class NetworkAnswer:
    outcome: NetworkOutcome
    decline_code: str | None = None
    # A status query answered `not_found`: unknown too, since a network's status index may lag
    # its authorizations; the workflow trusts it only once the attempt is old enough.
    not_found: bool = False
    # When the network accepted the operation (unix seconds, the network's clock): an
    # authorization's expiry counts from here, not from when we learned of it.
    network_time: float | None = None
    # No answer at all: the status query itself failed after its retries (unreachable, 5xx).
    unanswered: bool = False


class CardNetworkActivities:
    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        sessions: async_sessionmaker[AsyncSession],
        vault: VaultCipher | Cipher,
        base_url: str,
        timeout_seconds: float,
    ) -> None:
        if vault.purpose is not Purpose.VAULT:  # a miswired cipher fails here, not per charge
            raise ValueError(
                f"the card network adapter needs the vault's cipher, not {vault.purpose}'s"
            )
        self._http = http
        self._sessions = sessions
        self._vault = vault
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout_seconds

    @activity.defn
    async def authorize_card(self, request: AuthorizeInput) -> NetworkAnswer:
        """Charge (or authorize) at the network. 5xx/refused: retry; timeout/lost: unknown."""
        card = await self._card(request.card_token_id, request.network_reference)
        body: dict[str, object] = {
            "reference": request.network_reference,
            "type": "charge" if request.capture else "authorize",
            "amountInCents": request.amount_in_cents,
            "currency": request.currency,
            "card": card,
        }
        return await self._submit(body)

    @activity.defn
    async def capture_charge(self, request: OperationRequest) -> NetworkAnswer:
        """Capture (part of) an authorization; the network releases the rest."""
        return await self._submit(_operation_body("capture", request))

    @activity.defn
    async def void_authorization(self, request: OperationRequest) -> NetworkAnswer:
        """Release a whole authorization that was never captured."""
        return await self._submit(_operation_body("void", request))

    @activity.defn
    async def refund_charge(self, request: OperationRequest) -> NetworkAnswer:
        """Refund (part of) a charge or capture."""
        return await self._submit(_operation_body("refund", request))

    @activity.defn
    async def reverse_charge(self, request: OperationRequest) -> NetworkAnswer:
        """Reverse a charge/authorization whose answer was lost, by its reference: the network
        voids it if it approved it, or refuses it should it still arrive (cardnet/README.md)."""
        return await self._submit(_operation_body("reversal", request))

    @activity.defn
    async def query_charge_status(self, network_reference: str) -> NetworkAnswer:
        """Ask the network what it decided for a reference; `pending`, `not_found` and anything
        unrecognised read as unknown (the workflow decides when `not_found` can be trusted)."""
        try:
            answer = await self._query_status(network_reference)
        except ApplicationError:
            STATUS_QUERIES.labels(answer="unavailable").inc()
            raise
        STATUS_QUERIES.labels(
            answer="not_found" if answer.not_found else answer.outcome.value
        ).inc()
        return answer

    async def _query_status(self, network_reference: str) -> NetworkAnswer:
        try:
            response = await self._http.get(
                f"{self._base_url}/v1/operations/{network_reference}", timeout=self._timeout
            )
        except httpx.HTTPError as error:
            raise ApplicationError(
                "status query failed", type=ErrorType.NETWORK_UNAVAILABLE
            ) from error
        if response.status_code >= 500:
            raise ApplicationError(
                f"status query answered {response.status_code}", type=ErrorType.NETWORK_UNAVAILABLE
            )
        payload = _json_object(response)
        if response.status_code != 200 or payload is None:
            return NetworkAnswer(NetworkOutcome.UNKNOWN)
        if payload.get("status") == "not_found" and payload.get("reference") in (
            None,
            network_reference,
        ):
            return NetworkAnswer(NetworkOutcome.UNKNOWN, not_found=True)
        return _decision(payload, network_reference)

    async def _submit(self, body: dict[str, object]) -> NetworkAnswer:
        """One POST under the operation's own reference: a refusal before any byte was sent, or
        the network's own "unavailable, nothing charged", raises (retry with the same reference);
        everything else that is not a clear decision is unknown (status queries settle it)."""
        try:
            response = await self._http.post(
                f"{self._base_url}/v1/operations", json=body, timeout=self._timeout
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as error:
            # No connection, so no byte was sent: the network provably did not act.
            raise ApplicationError(
                "card network unreachable", type=ErrorType.NETWORK_UNAVAILABLE
            ) from error
        except httpx.HTTPError:
            # A timeout, a lost or broken answer: the request may have reached the network.
            return NetworkAnswer(NetworkOutcome.UNKNOWN)
        return _answer(response, str(body["reference"]))

    async def _card(self, token_id: str, network_reference: str) -> dict[str, object]:
        """The card of a recorded charge attempt, only if its token is the merchant's whose
        intent the attempt belongs to (read from the database, never from the request): a
        forged token id cannot make us decrypt, let alone send, another merchant's card.

        A refusal is final and proves nothing was sent: it happens before any byte leaves, and
        its answer cannot change between tries (a token is never deleted while a transaction
        names it, and neither it nor an intent changes merchant; its card number is deleted
        only with the charge's definite outcome, or a day after, see core/db/vault.py, and
        never comes back; nor does its epoch key once destroyed, core/vault_epochs.py)."""
        # One statement on the driver's connection, outside any transaction: a read of rows
        # that never change under it.
        async with driver_connection(self._sessions.kw["bind"]) as connection:
            token = await connection.fetchrow(_CARD_OF_CHARGE, token_id, network_reference)
        if token is None:
            raise ApplicationError(
                "card token not found for this charge's merchant: nothing was sent",
                type=ErrorType.VAULT_TOKEN_MISSING,
                non_retryable=True,
            )
        try:
            if token["pan_ciphertext"] is None:
                raise CardNumberDeleted(token_id)
            number = self._vault.decrypt(token["pan_ciphertext"], context=token_id).decode()
        except CardNumberDeleted:
            # Its column cleared, or its epoch key destroyed: the same fact, told the same way.
            raise ApplicationError(
                "the charge's card number was deleted: nothing was sent",
                type=ErrorType.VAULT_TOKEN_MISSING,
                non_retryable=True,
            ) from None
        return {"number": number, "expMonth": token["exp_month"], "expYear": token["exp_year"]}


# The token, only if it is a card of the merchant whose intent the charge belongs to.
_CARD_OF_CHARGE = """
SELECT c.pan_ciphertext, c.exp_month, c.exp_year
FROM transaction AS t
JOIN payment_intent AS i ON i.id = t.payment_intent_id
JOIN card_token AS c ON c.merchant_id = i.merchant_id
WHERE c.id = $1 AND t.id = $2 AND t.type = 'charge'
"""


def _operation_body(kind: str, request: OperationRequest) -> dict[str, object]:
    return {
        "reference": request.network_reference,
        "type": kind,
        "parentReference": request.parent_reference,
        "amountInCents": request.amount_in_cents,
        "currency": request.currency,
    }


# The network's documented answers that prove it did nothing with the request (its README):
# 503 `network_unavailable` (failed before charging), 409 `reference_reused` (the reference
# names another operation; nothing changes) and 422 `invalid_request` (malformed).
NOTHING_DONE_ERRORS = {503: "network_unavailable", 409: "reference_reused", 422: "invalid_request"}


def _answer(response: httpx.Response, reference: str) -> NetworkAnswer:
    payload = _json_object(response)
    error = payload.get("error") if payload is not None else None
    if NOTHING_DONE_ERRORS.get(response.status_code) == error and error is not None:
        if response.status_code == 503:
            # Nothing charged: retrying with the same reference is safe.
            raise ApplicationError(
                f"card network answered {response.status_code} {error}",
                type=ErrorType.NETWORK_UNAVAILABLE,
            )
        raise ApplicationError(
            f"card network did not process the request ({response.status_code} {error})",
            type=ErrorType.NETWORK_REJECTED_REQUEST,
            non_retryable=True,
        )
    if response.status_code != 200 or payload is None:
        # A gateway's 502/504, a 202 "pending", a body that is not the protocol: the network
        # may have committed; only a status query can tell.
        return NetworkAnswer(NetworkOutcome.UNKNOWN)
    return _decision(payload, reference)


def _decision(payload: dict[str, Any], reference: str) -> NetworkAnswer:
    """An approval or a decline for exactly this reference; anything else is unknown."""
    if payload.get("reference") != reference:
        return NetworkAnswer(NetworkOutcome.UNKNOWN)
    network_time = _unix_seconds(payload.get("createdAt"))
    if payload.get("status") == "approved":
        return NetworkAnswer(NetworkOutcome.APPROVED, network_time=network_time)
    if payload.get("status") == "declined":
        code = payload.get("declineCode")
        return NetworkAnswer(
            NetworkOutcome.DECLINED,
            code if isinstance(code, str) else None,
            network_time=network_time,
        )
    return NetworkAnswer(NetworkOutcome.UNKNOWN)


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        payload = response.json()
    except ValueError:  # truncated or not JSON at all (json and UnicodeDecodeError)
        return None
    return payload if isinstance(payload, dict) else None


def _unix_seconds(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
