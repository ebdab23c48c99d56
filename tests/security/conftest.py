"""The security tests use the API tests' fixtures: the real app on SQLite and PostgreSQL."""

from __future__ import annotations

from tests.hub.conftest import (  # noqa: F401 - fixtures, found by pytest by name
    api_database,
    api_database_url,
    hub,
    pg_api_database,
)
