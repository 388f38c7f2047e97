"""Every table of the service, imported in one place for alembic and the vault.

Importing this module registers all models on `Base.metadata`.
"""

from app.auth.models import ApiToken, Workspace
from app.db import Base

metadata = Base.metadata

__all__ = ["ApiToken", "Workspace", "metadata"]
