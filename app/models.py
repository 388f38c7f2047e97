"""Every table of the service, imported in one place for alembic and the vault.

Importing this module registers all models on `Base.metadata`.
"""

from app.audit.models import AuditEvent
from app.auth.models import ApiToken, Workspace
from app.broadcasts.models import Broadcast
from app.connections.models import TelegramConnection
from app.db import Base
from app.inbox.models import Contact, Conversation, ConversationMessage
from app.ingress.models import TelegramUpdate
from app.messages.models import OutboundMessage

metadata = Base.metadata

__all__ = [
    "ApiToken",
    "AuditEvent",
    "Broadcast",
    "Contact",
    "Conversation",
    "ConversationMessage",
    "OutboundMessage",
    "TelegramConnection",
    "TelegramUpdate",
    "Workspace",
    "metadata",
]
