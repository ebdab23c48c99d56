"""The hub's services, made once by the app's lifespan and shared by every request."""

from __future__ import annotations

import dataclasses

from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request

from channels.twilio.client import TwilioClient
from config import Settings
from hub.auth import Agent, TokenAuth, bearer_token
from hub.errors import ApiError
from timeline.db import Database
from timeline.files import FileStore
from timeline.publish import Publisher
from timeline.writer import GroupWriter


@dataclasses.dataclass
class Services:
    """Settings, database, files, live publisher, group writer, auth and provider clients."""

    settings: Settings
    db: Database
    files: FileStore
    publisher: Publisher
    tokens: TokenAuth
    writer: GroupWriter
    twilio: TwilioClient | None

    @classmethod
    def build(cls, settings: Settings, db: Database | None = None) -> Services:
        """Services for these settings (a new engine unless one is given)."""
        database = db or Database.from_url(settings.database_url)
        files = FileStore(settings.data_dir)
        publisher = Publisher()
        twilio = (
            TwilioClient.from_settings(settings) if settings.channel_enabled("twilio") else None
        )
        return cls(
            settings=settings,
            db=database,
            files=files,
            publisher=publisher,
            tokens=TokenAuth(database),
            writer=GroupWriter(
                database, region=settings.default_region, files=files, publisher=publisher
            ),
            twilio=twilio,
        )

    async def close(self) -> None:
        """Write what is queued and close every connection."""
        await self.writer.stop()
        self.publisher.close()
        if self.twilio is not None:
            await self.twilio.aclose()
        await self.db.dispose()

    async def authenticate(self, request: Request, conn: AsyncConnection | None = None) -> Agent:
        """The agent of the request's bearer token; 401 without a valid one.

        With ``conn`` the token is read in that transaction and its use is not recorded
        (the caller calls ``tokens.touch`` after the transaction).
        """
        token = bearer_token(request.headers.get("authorization", ""))
        if token is None:
            raise ApiError(401, "unauthorized", "missing bearer token")
        if conn is None:
            agent = await self.tokens.agent_for(token)
        else:
            agent = await self.tokens.lookup(conn, token)
        if agent is None:
            raise ApiError(401, "unauthorized", "invalid or revoked token")
        return agent
