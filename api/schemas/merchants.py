from __future__ import annotations

from pydantic import Field

from api.schemas.base import ApiModel, RequestModel


class MerchantCreate(RequestModel):
    name: str = Field(min_length=1, max_length=200)


class KeyRoll(RequestModel):
    # The old key pair keeps working this long, so a merchant can deploy the new one first.
    grace_period_seconds: int = Field(default=0, ge=0, le=7 * 24 * 3600)


class MerchantWithKeys(ApiModel):
    id: str
    object: str = "merchant"
    name: str
    public_key: str
    secret_key: str
