"""The card-network adapter: the only code that sends card data to the network.

The PAN is read from the vault and decrypted here, inside the activity, so it never enters a
workflow's input, result or history. Every call carries the transaction id as the network
reference, so a retry of this activity can never charge twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity
from temporalio.exceptions import ApplicationError

from core.crypto import Cipher
from core.db.tables import CardToken
from core.domain import NetworkOutcome
from core.errors import ErrorType


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


class CardNetworkActivities:
    def __init__(self, *, http: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession],
                 cipher: Cipher, base_url: str, timeout_seconds: float) -> None:
        self._http = http
        self._sessions = sessions
        self._cipher = cipher
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout_seconds

    @activity.defn
    async def authorize_card(self, request: AuthorizeInput) -> NetworkAnswer:
        """Charge (or authorize) at the network. 5xx/refused: retry; timeout/lost: unknown."""
        card = await self._card(request.card_token_id)
        body = {
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
    async def query_charge_status(self, network_reference: str) -> NetworkAnswer:
        """Ask the network what it decided for a reference; `pending` reads as unknown."""
        try:
            response = await self._http.get(
                f"{self._base_url}/v1/operations/{network_reference}", timeout=self._timeout)
        except httpx.HTTPError as error:
            raise ApplicationError("status query failed", type=ErrorType.NETWORK_UNAVAILABLE) \
                from error
        if response.status_code >= 500:
            raise ApplicationError(f"status query answered {response.status_code}",
                                   type=ErrorType.NETWORK_UNAVAILABLE)
        status = response.json().get("status")
        if status == "approved":
            return NetworkAnswer(NetworkOutcome.APPROVED)
        if status == "declined":
            return NetworkAnswer(NetworkOutcome.DECLINED, response.json().get("declineCode"))
        if status == "not_found":
            # The network never committed this reference: nothing was charged.
            return NetworkAnswer(NetworkOutcome.FAILED)
        return NetworkAnswer(NetworkOutcome.UNKNOWN)

    async def _submit(self, body: dict[str, object]) -> NetworkAnswer:
        """One POST under the operation's own reference: 5xx/refused raise (retry with the same
        reference), a timeout or a lost answer is unknown (status queries settle it)."""
        try:
            response = await self._http.post(f"{self._base_url}/v1/operations", json=body,
                                             timeout=self._timeout)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as error:
            # No connection, so no byte was sent: the network provably did not act.
            raise ApplicationError("card network unreachable", type=ErrorType.NETWORK_UNAVAILABLE) \
                from error
        except (httpx.TimeoutException, httpx.RemoteProtocolError, httpx.ReadError):
            # The request may have reached the network: only a status query can tell.
            return NetworkAnswer(NetworkOutcome.UNKNOWN)
        return _answer(response)

    async def _card(self, token_id: str) -> dict[str, object]:
        async with self._sessions() as session:
            token = await session.get(CardToken, token_id)
        if token is None:
            raise ApplicationError("card token not found", type=ErrorType.VAULT_TOKEN_MISSING,
                                   non_retryable=True)
        number = self._cipher.decrypt(token.pan_ciphertext, context=token.id).decode()
        return {"number": number, "expMonth": token.exp_month, "expYear": token.exp_year}


def _operation_body(kind: str, request: OperationRequest) -> dict[str, object]:
    return {"reference": request.network_reference, "type": kind,
            "parentReference": request.parent_reference,
            "amountInCents": request.amount_in_cents, "currency": request.currency}


def _answer(response: httpx.Response) -> NetworkAnswer:
    if response.status_code >= 500:
        # The network says it failed without charging; retrying with the same reference is safe.
        raise ApplicationError(f"card network answered {response.status_code}",
                               type=ErrorType.NETWORK_UNAVAILABLE)
    if response.status_code == 202:
        # The network took the request but has not decided: only status queries can tell.
        return NetworkAnswer(NetworkOutcome.UNKNOWN)
    if response.status_code != 200:
        # A request the network refuses to process (e.g. malformed) will not improve on retry.
        raise ApplicationError(f"card network rejected the request ({response.status_code})",
                               type=ErrorType.NETWORK_REJECTED_REQUEST, non_retryable=True)
    payload = response.json()
    if payload.get("status") == "approved":
        return NetworkAnswer(NetworkOutcome.APPROVED)
    return NetworkAnswer(NetworkOutcome.DECLINED, payload.get("declineCode"))
