from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from api.schemas.base import ApiModel, RequestModel, examples


class MerchantCreate(RequestModel):
    model_config = ConfigDict(json_schema_extra=examples({"name": "Acme"}))

    name: str = Field(min_length=1, max_length=200)


class KeyRoll(RequestModel):
    model_config = ConfigDict(json_schema_extra=examples({"gracePeriodSeconds": 3600}))

    # The old key pair keeps working this long, so a merchant can deploy the new one first.
    grace_period_seconds: int = Field(default=0, ge=0, le=7 * 24 * 3600)


class MerchantWithKeys(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=examples(
            {
                "id": "mer_0c7a4e19b2d85f36a1e0c9b4",
                "object": "merchant",
                "name": "Acme",
                "publicKey": "pk_test_6f1e9a0c3b7d25e48a9c1f0e7b3d6a25",
                "secretKey": "sk_test_b2e7c41f9a03d86e5c1b7f2a9e04d3c8b6a1f7e2d9c05b43",
            }
        )
    )

    id: str
    object: Literal["merchant"] = "merchant"
    name: str
    public_key: str
    secret_key: str
