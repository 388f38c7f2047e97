"""Every table of the service, imported in one place for alembic and the vault.

Importing this module registers all models on `Base.metadata`.
"""

from app.auth.models import ApiToken, Workspace
from app.connections.models import TelegramConnection
from app.db import Base
from app.inbox.models import Contact, Conversation, ConversationMessage
from app.ingress.models import TelegramUpdate

metadata = Base.metadata

__all__ = [
    "ApiToken",
    "Contact",
    "Conversation",
    "ConversationMessage",
    "TelegramConnection",
    "TelegramUpdate",
    "Workspace",
    "metadata",
]
