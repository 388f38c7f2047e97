from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel


class EventOut(BaseModel):
    id: uuid.UUID
    connection_id: uuid.UUID
    update_id: int
    type: str
    source: str
    received_at: datetime
