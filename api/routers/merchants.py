from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, status
from sqlalchemy import or_, update
from sqlmodel import col

from api.deps import AdminDep, AuthenticatedRoute, SessionDep, StateDep
from api.errors import NotFoundError
from api.openapi import errors
from api.schemas.merchants import KeyRoll, MerchantCreate, MerchantWithKeys
from core.crypto import new_key_pair
from core.db.tables import Merchant, MerchantKey
from core.domain import new_id

router = APIRouter(
    prefix="/merchants", tags=["merchants (operator)"], route_class=AuthenticatedRoute
)


@router.post(
    "",
    response_model=MerchantWithKeys,
    status_code=status.HTTP_201_CREATED,
    operation_id="merchants-create",
    responses=errors(400, 401, 429, 503),
    summary="Onboard a merchant (admin token); the secret key is shown only here",
)
async def create_merchant(
    body: MerchantCreate, _: AdminDep, state: StateDep, session: SessionDep
) -> MerchantWithKeys:
    merchant = Merchant(id=new_id("mer"), name=body.name)
    session.add(merchant)
    await session.flush()
    public_key, secret_key = _add_key(session, state, merchant.id)
    await session.commit()
    return MerchantWithKeys(
        id=merchant.id, name=merchant.name, public_key=public_key, secret_key=secret_key
    )


@router.post(
    "/{id}/keys/roll",
    response_model=MerchantWithKeys,
    status_code=status.HTTP_200_OK,
    operation_id="merchants-keys-roll",
    responses=errors(400, 401, 404, 429, 503),
    summary="Issue a new key pair; the old one stops working after the grace period",
)
async def roll_merchant_keys(
    id: str, _: AdminDep, state: StateDep, session: SessionDep, body: KeyRoll | None = None
) -> MerchantWithKeys:
    merchant = await session.get(Merchant, id)
    if merchant is None:
        raise NotFoundError("merchant", id)
    now = datetime.now(UTC)
    grace = timedelta(seconds=(body or KeyRoll()).grace_period_seconds)
    await session.exec(
        update(MerchantKey)
        .where(
            col(MerchantKey.merchant_id) == id,
            or_(col(MerchantKey.expires_at).is_(None), col(MerchantKey.expires_at) > now + grace),
        )
        .values(expires_at=now + grace)
    )
    public_key, secret_key = _add_key(session, state, id)
    await session.commit()
    return MerchantWithKeys(
        id=merchant.id, name=merchant.name, public_key=public_key, secret_key=secret_key
    )


def _add_key(session: SessionDep, state: StateDep, merchant_id: str) -> tuple[str, str]:
    public_key, secret_key = new_key_pair()
    # Bound to the public key: the ciphertext cannot be moved onto another key's row.
    ciphertext = state.merchant_secrets.encrypt(secret_key.encode(), context=public_key)
    session.add(
        MerchantKey(public_key=public_key, merchant_id=merchant_id, secret_ciphertext=ciphertext)
    )
    return public_key, secret_key
