"""commhub's command line: ``python run.py COMMAND`` (installed as ``commhub``).

Commands (CONTRACT.md): serve, worker, demo, migrate, agent add/list/revoke-token/passwd,
config. Exit status 0 on success; 2 with one line on stderr for bad usage or bad configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import config
from config import Settings, SettingsError
from config.fields import env_example, markdown_table


class UsageError(Exception):
    """Bad usage: printed as one line, exit status 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="commhub", description="A unified communications hub for customer relationships."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="apply migrations, serve web + API, run the workers")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--no-workers", action="store_true", help="web only")

    sub.add_parser("worker", help="run the background workers only")
    sub.add_parser("migrate", help="apply database migrations and exit")

    demo = sub.add_parser("demo", help="a fresh demo database with history, then serve")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--dir", default="./var/demo", help="where the demo keeps its data")

    agent = sub.add_parser("agent", help="manage agents")
    agent_sub = agent.add_subparsers(dest="agent_command", required=True, metavar="ACTION")
    add = agent_sub.add_parser("add", help="create an agent; prints its API token last")
    add.add_argument("email")
    add.add_argument("--role", required=True, choices=["agent", "supervisor", "admin"])
    add.add_argument("--name")
    add.add_argument("--team")
    add.add_argument("--phone", help="the agent's own phone: click-to-call rings it first")
    add.add_argument("--password-stdin", action="store_true", help="read a password from stdin")
    agent_sub.add_parser("list", help="list agents: id, email, role, team, active tokens")
    revoke = agent_sub.add_parser("revoke-token", help="revoke an API token by its id")
    revoke.add_argument("token_id")
    passwd = agent_sub.add_parser(
        "passwd", help="set an agent's console password (ends all their console sessions)"
    )
    passwd.add_argument("email")
    passwd.add_argument(
        "--password-stdin", action="store_true", required=True, help="read the password from stdin"
    )

    mail = sub.add_parser("mail", help="email channel tools")
    mail_sub = mail.add_subparsers(dest="mail_command", required=True, metavar="ACTION")
    mail_sub.add_parser("sync", help="sync the IMAP folders once, with progress, and exit")

    replay = sub.add_parser(
        "replay", help="send a recorded provider payload, signed, to a running hub"
    )
    replay.add_argument("fixture", help="a recorded payload, e.g. channels/twilio/fixtures/*.txt")
    replay.add_argument(
        "--url",
        required=True,
        help="the webhook URL, e.g. http://127.0.0.1:8000/webhooks/twilio/sms",
    )

    cfg = sub.add_parser("config", help="print generated configuration docs")
    what = cfg.add_mutually_exclusive_group(required=True)
    what.add_argument("--env-example", action="store_true", help="the text of .env.example")
    what.add_argument("--markdown", action="store_true", help="the README's settings table")
    what.add_argument("--check", action="store_true", help="load the settings and report")
    return parser


def _logging(settings: Settings) -> None:
    from hub.audit import install_log_escaping

    # A CR/LF in a logged value must not forge a log line (CWE-117).
    install_log_escaping()
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Alembic reports every plugin and step at INFO; a start-up needs none of that.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # httpx logs every request URL at INFO; ours can carry phone numbers.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))


def _serve(settings: Settings, host: str, port: int, workers: bool) -> None:
    import uvicorn

    from hub.app import create_app

    settings.require_secret_key()
    app = create_app(settings, run_workers=workers)
    uvicorn.run(app, host=host, port=port, log_level=settings.log_level.lower(), access_log=False)


async def _migrate(settings: Settings) -> str:
    from timeline.db import Database
    from timeline.migrate import upgrade

    db = Database.from_url(settings.database_url)
    try:
        await upgrade(db)
    finally:
        await db.dispose()
    return settings.database_url.split("@")[-1]


async def _worker(settings: Settings) -> None:
    from hub.services import Services
    from hub.workers import Workers
    from timeline.migrate import upgrade

    services = Services.build(settings)
    await upgrade(services.db)
    workers = Workers(services)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await workers.run_forever()
    except asyncio.CancelledError:
        pass
    finally:
        await services.db.dispose()


async def _agent_add(settings: Settings, args: argparse.Namespace, password: str | None) -> str:
    from hub import audit
    from hub.auth import add_agent
    from hub.voice_outbound import set_phone
    from timeline.db import Database
    from timeline.errors import Conflict, InvalidIdentity
    from timeline.migrate import upgrade

    db = Database.from_url(settings.database_url)
    try:
        await upgrade(db)
        async with db.write() as conn:
            agent_id, token = await add_agent(
                conn,
                email=args.email,
                role=args.role,
                name=args.name,
                team=args.team,
                password=password,
            )
            if args.phone:
                await set_phone(conn, agent_id, args.phone, settings.default_region)
            await audit.record(
                conn,
                "agent.create",
                detail={"agent": agent_id, "role": args.role, "team": args.team, "via": "cli"},
            )
    except (Conflict, InvalidIdentity) as exc:
        raise UsageError(str(exc)) from None
    finally:
        await db.dispose()
    return token


async def _agent_passwd(settings: Settings, email: str, password: str) -> int:
    """Reset an agent's password (audited); the number of console sessions ended."""
    from hub import passwords
    from timeline.db import Database
    from timeline.migrate import upgrade

    db = Database.from_url(settings.database_url)
    try:
        await upgrade(db)
        async with db.write() as conn:
            agent_id = await passwords.agent_id_for_email(conn, email)
            changed = await passwords.set_password(conn, agent_id, password)
    except passwords.UnknownAgent:
        raise UsageError(f"no active agent {email}") from None
    finally:
        await db.dispose()
    return changed.sessions_ended


async def _agent_list(settings: Settings) -> list[str]:
    """One line per agent: id, email, role, team, active tokens, disabled."""
    import sqlalchemy as sa

    from timeline.db import Database
    from timeline.migrate import upgrade
    from timeline.schema import agents, api_tokens

    db = Database.from_url(settings.database_url)
    try:
        await upgrade(db)
        async with db.read() as conn:
            active = (
                sa.select(sa.func.count())
                .select_from(api_tokens)
                .where(api_tokens.c.agent_id == agents.c.id, api_tokens.c.revoked_at.is_(None))
                .scalar_subquery()
            )
            rows = await conn.execute(
                sa.select(agents, active.label("tokens")).order_by(agents.c.email)
            )
            return [
                f"{r.id}  {r.email}  {r.role}  team={r.team or '-'}  tokens={r.tokens}"
                + ("  disabled" if r.disabled_at else "")
                for r in rows
            ]
    finally:
        await db.dispose()


async def _revoke_token(settings: Settings, token_id: str) -> None:
    """Revoke an API token (audited); UsageError for an unknown or revoked one."""
    from hub import audit
    from timeline.db import Database
    from timeline.events import utcnow
    from timeline.migrate import upgrade
    from timeline.schema import api_tokens

    db = Database.from_url(settings.database_url)
    try:
        await upgrade(db)
        async with db.write() as conn:
            done = await conn.execute(
                api_tokens.update()
                .where(api_tokens.c.id == token_id, api_tokens.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            if done.rowcount == 0:
                raise UsageError(f"no active token {token_id}")
            await audit.record(conn, "token.revoke", detail={"token_id": token_id, "via": "cli"})
    finally:
        await db.dispose()


async def _demo_seed(settings: Settings) -> tuple[str, str, str]:
    from hub.demo import seed
    from timeline.db import Database
    from timeline.files import FileStore
    from timeline.migrate import upgrade

    db = Database.from_url(settings.database_url)
    try:
        await upgrade(db)
        login = await seed(db, FileStore(settings.data_dir))
    finally:
        await db.dispose()
    return login.email, login.password, login.token


def _write_demo_config(settings: Settings, path: Path) -> Path:
    """The demo's settings as a HUB_CONFIG file, so other commands can talk to it."""
    import json

    from config.fields import FIELDS

    defaults = Settings()
    lines = ["# Settings of the running demo (made by `commhub demo`; holds its secrets)."]
    for field in FIELDS:
        value = getattr(settings, field.attr)
        if value == getattr(defaults, field.attr):
            continue
        if isinstance(value, bool):
            rendered = "true" if value else "false"
        elif isinstance(value, (int, float)):
            rendered = str(value)
        elif isinstance(value, tuple):
            rendered = "[" + ", ".join(json.dumps(v) for v in value) + "]"
        else:
            rendered = json.dumps(value)
        lines.append(f"{field.env} = {rendered}")
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def _demo(args: argparse.Namespace) -> None:
    root = Path(args.dir).resolve()
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    from hub.demo import OUR_NUMBER, VOICE_CLIENTS

    sandbox_url = f"http://127.0.0.1:{args.port + 1}"
    settings = config.load(
        {k: v for k, v in os.environ.items() if k == "HUB_LOG_LEVEL"},
        database_url=f"sqlite+aiosqlite:///{root}/hub.db",
        data_dir=str(root / "files"),
        secret_key=secrets.token_urlsafe(32),
        public_url=f"http://{args.host}:{args.port}",
        twilio_account_sid="AC" + secrets.token_hex(16),
        twilio_auth_token=secrets.token_hex(16),
        twilio_numbers=(OUR_NUMBER,),
        twilio_voice_clients=VOICE_CLIENTS,
        twilio_api_base=sandbox_url,
        twilio_sandbox=True,
        twilio_sms_rate=5.0,
    )
    _logging(settings)
    config_file = _write_demo_config(settings, root / "hub.toml")
    print(f"Building a fresh demo database in {root} ...", flush=True)
    email, password, token = asyncio.run(_demo_seed(settings))
    url = f"http://{args.host}:{args.port}"
    print(
        f"\ncommhub demo is starting at {url}\n"
        f"  console:   {url}/ui/  (log in as {email} / {password})\n"
        f"  sandbox:   {url}/ui/sandbox  (play a customer: text or call the hub)\n"
        f"  API token: {token}\n"
        f"  try:       curl -H 'Authorization: Bearer {token}' {url}/api/v1/customers\n"
        f"  schema:    {url}/openapi.json\n"
        f"  or curl:   a customer texts the hub (Twilio sandbox at {sandbox_url}):\n"
        f"    curl -X POST {sandbox_url}/sandbox/sms -H 'Content-Type: application/json' \\\n"
        f'      -d \'{{"from": "+14155550100", "to": "{OUR_NUMBER}", "body": "Hello"}}\'\n'
        f"    and reads the hub's answers:\n"
        f"    curl {sandbox_url}/sandbox/phones/+14155550100/messages\n"
        f"  replay:    a recorded webhook, signed with the demo's settings:\n"
        f"    HUB_CONFIG={config_file} python run.py replay \\\n"
        f"      channels/twilio/fixtures/inbound_sms.txt --url {url}/webhooks/twilio/sms\n",
        flush=True,
    )
    _serve(settings, args.host, args.port, workers=True)


async def _mail_sync(settings: Settings) -> None:
    from channels.email.imap import ImapConfig
    from hub.email_ingest import MailIngest
    from hub.services import Services
    from timeline.migrate import upgrade

    if not settings.channel_enabled("imap"):
        raise UsageError("the imap channel is off: set IMAP_HOST, IMAP_USERNAME, IMAP_PASSWORD")
    services = Services.build(settings)
    await upgrade(services.db)

    def progress(folder: str, done: int, total: int, created: int) -> None:
        print(
            f"  {folder}: {done} of {total} messages read, {created} new in this batch", flush=True
        )

    ingest = MailIngest(services, progress=progress)
    print(f"syncing the last {settings.imap_sync_days} days of mail ...", flush=True)
    try:
        results = await ingest.sync_once(ImapConfig.from_settings(settings))
    finally:
        await services.close()
    for result in results:
        print(f"{result.folder}: {result.fetched} fetched{' (resync)' if result.resync else ''}")
    print(f"{ingest.stored} new messages stored")


def _replay(settings: Settings, fixture: str, url: str) -> int:
    """POST a recorded payload, signed as its provider would sign it; 0 if answered 2xx."""
    import hashlib
    from urllib.parse import urlsplit

    import httpx

    from channels.twilio import signature
    from channels.twilio.forms import decode_form

    try:
        body = Path(fixture).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {fixture}: {exc.strerror}") from None
    parts = urlsplit(url)
    if not parts.path.startswith("/webhooks/twilio/"):
        raise UsageError("replay knows the Twilio webhooks (/webhooks/twilio/...)")
    token = settings.twilio_auth_token
    if not token:
        raise UsageError("TWILIO_AUTH_TOKEN is needed to sign a Twilio payload")
    query = parts.query
    if fixture.endswith(".json"):
        digest = hashlib.sha256(body).hexdigest()
        query = f"{query}&bodySHA256={digest}" if query else f"bodySHA256={digest}"
        signed = signature.public_url_for(settings.public_url, parts.path, query)
        sig = signature.sign(token, signed, None)
        content_type = "application/json"
    else:
        signed = signature.public_url_for(settings.public_url, parts.path, query)
        sig = signature.sign(token, signed, decode_form(body))
        content_type = "application/x-www-form-urlencoded"
    target = parts._replace(query=query).geturl()
    response = httpx.post(
        target,
        content=body,
        headers={"Content-Type": content_type, signature.SIGNATURE_HEADER: sig},
        timeout=30,
    )
    print(f"{response.status_code} {response.text[:500]}")
    return 0 if response.is_success else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "config" and not args.check:
            print(env_example() if args.env_example else markdown_table(), end="")
            return 0
        if args.command == "demo":
            _demo(args)
            return 0
        settings = config.load()
        _logging(settings)
        if args.command == "config":
            print(repr(settings))
            return 0
        if args.command == "serve":
            _serve(settings, args.host, args.port, workers=not args.no_workers)
        elif args.command == "migrate":
            where = asyncio.run(_migrate(settings))
            print(f"database is up to date ({where})")
        elif args.command == "mail":
            asyncio.run(_mail_sync(settings))
        elif args.command == "replay":
            return _replay(settings, args.fixture, args.url)
        elif args.command == "worker":
            asyncio.run(_worker(settings))
        elif args.command == "agent" and args.agent_command == "list":
            for line in asyncio.run(_agent_list(settings)):
                print(line)
        elif args.command == "agent" and args.agent_command == "passwd":
            ended = asyncio.run(
                _agent_passwd(settings, args.email, sys.stdin.readline().rstrip("\r\n"))
            )
            print(f"password of {args.email} changed; {ended} console session(s) ended")
        elif args.command == "agent" and args.agent_command == "revoke-token":
            asyncio.run(_revoke_token(settings, args.token_id))
            print(f"token {args.token_id} revoked")
        elif args.command == "agent":
            password = None
            if args.password_stdin:
                password = sys.stdin.readline().rstrip("\r\n")
                if len(password) < 8:
                    raise UsageError("the password must have at least 8 characters")
            token = asyncio.run(_agent_add(settings, args, password))
            print(f"agent {args.email} added with role {args.role}; API token:")
            print(token)
    except (SettingsError, UsageError, ValueError) as exc:
        print(f"commhub: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
