from __future__ import annotations

from typing import Any

from api.schemas.base import ApiModel, Timestamp


class EventOut(ApiModel):
    id: str
    object: str = "event"
    type: str
    created_at: Timestamp
    data: dict[str, Any]
