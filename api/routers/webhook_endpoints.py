"""Webhook endpoints: where a merchant's events are delivered, and what happened to each."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, status
from sqlalchemy import func, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from api.deps import AuthenticatedRoute, MerchantDep, SessionDep, StateDep
from api.errors import InvalidRequestError, NotFoundError
from api.openapi import errors
from api.pagination import newest_first_page
from api.schemas.base import ListOf
from api.schemas.webhook_endpoints import (
    SecretRotation,
    WebhookDeliveryOut,
    WebhookEndpointCreate,
    WebhookEndpointDeleted,
    WebhookEndpointOut,
    WebhookEndpointUpdate,
    WebhookEndpointWithSecret,
)
from api.views import load_webhook_deliveries_out, webhook_endpoint_out
from core.db.tables import Merchant, WebhookDelivery, WebhookEndpoint
from core.domain import new_id, utcnow
from core.settings import Settings
from core.webhooks import UnsafeUrl, UrlPolicy, check_webhook_url, new_webhook_secret

router = APIRouter(
    prefix="/webhook-endpoints", tags=["webhook endpoints"], route_class=AuthenticatedRoute
)


async def get_owned_endpoint(
    id: str, merchant: MerchantDep, session: SessionDep
) -> WebhookEndpoint:
    endpoint = (
        await session.exec(
            select(WebhookEndpoint).where(
                WebhookEndpoint.id == id,
                WebhookEndpoint.merchant_id == merchant.id,
                col(WebhookEndpoint.deleted_at).is_(None),
            )
        )
    ).first()
    if endpoint is None:
        # Another merchant's endpoint is indistinguishable from a missing one.
        raise NotFoundError("webhook endpoint", id)
    return endpoint


OwnedEndpointDep = Annotated[WebhookEndpoint, Depends(get_owned_endpoint)]


@router.post(
    "",
    response_model=WebhookEndpointWithSecret,
    status_code=status.HTTP_201_CREATED,
    operation_id="webhook-endpoints-create",
    responses=errors(400, 401, 429, 503),
    summary="Create a webhook endpoint; its `whsec_` signing secret is shown only here",
    description="The URL must be https and must not resolve to a loopback, private, "
    "link-local or metadata address (400 `url_not_allowed`) unless the "
    "operator allows private networks. `enabledEvents` lists event types "
    'or `["*"]` for every payment event. A merchant has at most '
    "`DURAPAY_MAX_WEBHOOK_ENDPOINTS` (default 16) endpoints, deleted ones "
    "not counted: past it, 400 `webhook_endpoint_limit_reached`.",
)
async def create_webhook_endpoint(
    body: WebhookEndpointCreate,
    merchant: MerchantDep,
    state: StateDep,
    session: SessionDep,
) -> WebhookEndpointWithSecret:
    await _check_url(body.url, state.settings)
    await _check_endpoint_count(session, merchant.id, state.settings.max_webhook_endpoints)
    secret = new_webhook_secret()
    endpoint_id = new_id("we")
    endpoint = WebhookEndpoint(
        id=endpoint_id,
        merchant_id=merchant.id,
        url=body.url,
        description=body.description,
        enabled_events=body.enabled_events,
        status="enabled",
        # Bound to the endpoint id: the ciphertext cannot be moved onto another endpoint.
        secret_ciphertext=state.webhook_secrets.encrypt(secret.encode(), context=endpoint_id),
    )
    session.add(endpoint)
    await session.commit()
    await session.refresh(endpoint)
    return WebhookEndpointWithSecret(**webhook_endpoint_out(endpoint).model_dump(), secret=secret)


@router.get(
    "",
    response_model=ListOf[WebhookEndpointOut],
    operation_id="webhook-endpoints-list",
    responses=errors(400, 401, 429, 503),
    summary="List your webhook endpoints, newest first (secrets are never listed)",
)
async def list_webhook_endpoints(
    merchant: MerchantDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    starting_after: Annotated[str | None, Query(alias="startingAfter")] = None,
) -> ListOf[WebhookEndpointOut]:
    live = (WebhookEndpoint.merchant_id == merchant.id, col(WebhookEndpoint.deleted_at).is_(None))
    rows, has_more = await newest_first_page(
        session,
        WebhookEndpoint,
        live,
        limit=limit,
        starting_after=starting_after,
        noun="webhook endpoint",
    )
    return ListOf[WebhookEndpointOut](
        data=[webhook_endpoint_out(e) for e in rows], has_more=has_more
    )


@router.get(
    "/{id}",
    response_model=WebhookEndpointOut,
    operation_id="webhook-endpoints-retrieve",
    responses=errors(401, 404, 429, 503),
    summary="Retrieve a webhook endpoint",
)
async def get_webhook_endpoint(endpoint: OwnedEndpointDep) -> WebhookEndpointOut:
    return webhook_endpoint_out(endpoint)


@router.post(
    "/{id}",
    response_model=WebhookEndpointOut,
    operation_id="webhook-endpoints-update",
    responses=errors(400, 401, 404, 429, 503),
    summary="Update a webhook endpoint: url, enabledEvents, description, or "
    "status `enabled`/`disabled`",
    description="Disabling stops deliveries (pending ones end `canceled`); enabling "
    "clears the failure record and resumes deliveries of new events.",
)
async def update_webhook_endpoint(
    body: WebhookEndpointUpdate, endpoint: OwnedEndpointDep, state: StateDep, session: SessionDep
) -> WebhookEndpointOut:
    changes = body.model_dump(exclude_unset=True, exclude_none=True)
    if "url" in changes:
        await _check_url(changes["url"], state.settings)
    if changes.get("status") == "enabled" and endpoint.status != "enabled":
        changes.update(disabled_reason=None, failing_since=None)
    elif changes.get("status") == "disabled" and endpoint.status != "disabled":
        changes["disabled_reason"] = "merchant"
    if changes:
        await session.exec(
            update(WebhookEndpoint)
            .where(col(WebhookEndpoint.id) == endpoint.id)
            .values(**changes, updated_at=utcnow())
        )
        await session.commit()
        await session.refresh(endpoint)
    return webhook_endpoint_out(endpoint)


@router.delete(
    "/{id}",
    response_model=WebhookEndpointDeleted,
    operation_id="webhook-endpoints-delete",
    responses=errors(401, 404, 429, 503),
    summary="Delete a webhook endpoint; its pending deliveries end `canceled`",
)
async def delete_webhook_endpoint(
    endpoint: OwnedEndpointDep, session: SessionDep
) -> WebhookEndpointDeleted:
    # Soft delete: the deliveries and attempts that name it stay readable for the audit.
    await session.exec(
        update(WebhookEndpoint)
        .where(col(WebhookEndpoint.id) == endpoint.id)
        .values(deleted_at=utcnow(), updated_at=utcnow())
    )
    await session.commit()
    return WebhookEndpointDeleted(id=endpoint.id)


@router.post(
    "/{id}/rotate-secret",
    response_model=WebhookEndpointWithSecret,
    operation_id="webhook-endpoints-rotate-secret",
    responses=errors(400, 401, 404, 429, 503),
    summary="Rotate the signing secret; the old one also signs during the grace period",
    description="Returns the new `whsec_` secret (shown only here). Until the grace "
    "period ends (`gracePeriodSeconds`, default 24 h, at most 7 days) "
    "every delivery carries two signatures, `v1,<new> v1,<old>`, so "
    "receivers can switch secrets without losing a message.",
)
async def rotate_webhook_secret(
    endpoint: OwnedEndpointDep,
    state: StateDep,
    session: SessionDep,
    body: SecretRotation | None = None,
) -> WebhookEndpointWithSecret:
    grace = (body or SecretRotation()).grace_period_seconds
    if grace is None:
        grace = state.settings.webhook_rotation_grace_seconds
    secret = new_webhook_secret()
    await session.exec(
        update(WebhookEndpoint)
        .where(col(WebhookEndpoint.id) == endpoint.id)
        .values(
            previous_secret_ciphertext=endpoint.secret_ciphertext if grace > 0 else None,
            previous_secret_expires_at=utcnow() + timedelta(seconds=grace) if grace > 0 else None,
            secret_ciphertext=state.webhook_secrets.encrypt(secret.encode(), context=endpoint.id),
            updated_at=utcnow(),
        )
    )
    await session.commit()
    await session.refresh(endpoint)
    return WebhookEndpointWithSecret(**webhook_endpoint_out(endpoint).model_dump(), secret=secret)


@router.get(
    "/{id}/deliveries",
    response_model=ListOf[WebhookDeliveryOut],
    operation_id="webhook-endpoints-deliveries-list",
    responses=errors(400, 401, 404, 429, 503),
    summary="List an endpoint's deliveries, newest first, each with every attempt "
    "(time, HTTP status or error, duration, start of the response body)",
)
async def list_webhook_deliveries(
    endpoint: OwnedEndpointDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    starting_after: Annotated[str | None, Query(alias="startingAfter")] = None,
) -> ListOf[WebhookDeliveryOut]:
    rows, has_more = await newest_first_page(
        session,
        WebhookDelivery,
        [WebhookDelivery.endpoint_id == endpoint.id],
        limit=limit,
        starting_after=starting_after,
        noun="webhook delivery",
    )
    data = await load_webhook_deliveries_out(session, rows)
    return ListOf[WebhookDeliveryOut](data=data, has_more=has_more)


async def _check_endpoint_count(session: AsyncSession, merchant_id: str, limit: int) -> None:
    """Refuse a new endpoint past the merchant's limit. The merchant's row stays locked until
    the endpoint commits, so two concurrent creations cannot both pass the count (NO KEY
    UPDATE: the merchant's payments, which only reference the row, are not held up)."""
    await session.exec(
        select(Merchant.id).where(Merchant.id == merchant_id).with_for_update(key_share=True)
    )
    live = (
        await session.exec(
            select(func.count())
            .select_from(WebhookEndpoint)
            .where(
                WebhookEndpoint.merchant_id == merchant_id,
                col(WebhookEndpoint.deleted_at).is_(None),
            )
        )
    ).one()
    if live >= limit:
        raise InvalidRequestError(
            "webhook_endpoint_limit_reached",
            f"A merchant can have at most {limit} webhook endpoints; delete one you no longer "
            "use before creating another.",
        )


async def _check_url(url: str, settings: Settings) -> None:
    try:
        await check_webhook_url(url, UrlPolicy.from_settings(settings))
    except UnsafeUrl as error:
        raise InvalidRequestError(error.code, str(error), "url") from error
