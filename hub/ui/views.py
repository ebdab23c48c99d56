"""The console's pages: login, search, the customer's 360 view and its actions.

Handlers read and write through the same ``timeline`` functions as the JSON API (and
the same ``hub.sms_outbound`` / ``hub.email_outbound`` queueing), in one transaction
each, and publish what changed after the commit, so other agents' consoles and API
clients see it live. Errors an agent can fix come back as a message in the page.
"""

from __future__ import annotations

import secrets
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from hub import audit, sessions, throttle
from hub.auth import check_password, hash_password
from hub.email_outbound import queue_email
from hub.errors import ApiError
from hub.routing import team_scope
from hub.sessions import Session
from hub.sms_outbound import Refused, queue_sms
from hub.ui.guard import console, console_of, field, form_of, redirect, refused
from hub.ui.render import EMAIL_CSP_IMAGES, email_document, group_threads, recording_of
from hub.voice_recording import stream_recording
from timeline import calls as call_ops
from timeline import customers as customer_ops
from timeline import documents as document_ops
from timeline import merge as merge_ops
from timeline import store
from timeline.errors import TimelineError
from timeline.events import Channel, Direction, Event, Identity, IdentityKind, Kind, utcnow
from timeline.identity import normalize_email, normalize_phone
from timeline.ingest import ingest_batch
from timeline.records import Customer, StoredEvent
from timeline.schema import agents, events

PAGE = 30
LOGIN_COOKIE = "commhub_login"
_CHANNELS = [c.value for c in Channel]
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


def _login_cookie(public_url: str) -> str:
    return ("__Host-" if sessions.is_https(public_url) else "") + LOGIN_COOKIE


def teams(session: Session) -> frozenset[str] | None:
    """The teams whose customers the session's agent sees (None: all), as in the API."""
    return team_scope(session.agent)


async def active_pops(
    request: Request, session: Session, conn: AsyncConnection | None = None
) -> list[dict[str, Any]]:
    """Screen pops of the calls ringing or in progress that the agent may see (rendered
    on every page): calls of customers of other teams are left out. In ``conn``'s
    transaction when given (one transaction less for a page that reads anyway)."""
    from hub.voice_state import screen_pops

    if conn is None:
        async with console_of(request).services.db.read() as own:
            return await active_pops(request, session, own)
    rows = await call_ops.open_calls(conn, limit=200)
    if not rows:
        return []
    calls = [event for _, event in rows]
    seen = await customer_ops.visible_ids(conn, [e.customer_id for e in calls], teams(session))
    return await screen_pops(conn, [e for e in calls if e.customer_id in seen][:20])


async def page(
    request: Request,
    session: Session,
    name: str,
    status: int = 200,
    *,
    calls: list[dict[str, Any]] | None = None,
    **context: Any,
) -> HTMLResponse:
    """A full console page (with the active calls' banners, read here unless given)."""
    if calls is None:
        calls = await active_pops(request, session)
    return console_of(request).render(
        request, name, status=status, session=session, calls=calls, **context
    )


async def foreign(request: Request, session: Session, customer_id: str) -> Response | None:
    """A 404 when the agent may not see this customer (another team's): like an unknown
    one, so ids cannot be probed (OWASP ASVS 5.0 V8.2.2); None when they may."""
    scope = teams(session)
    if scope is None:
        return None
    async with console_of(request).services.db.read() as conn:
        if await customer_ops.is_visible(conn, customer_id, scope):
            return None
    if request.headers.get("hx-request") or request.method != "GET":
        return refused(request, 404, "No such customer.")
    return await page(request, session, "error.html", 404, message="No such customer.")


# -- login ---------------------------------------------------------------------------------


async def login_form(request: Request) -> Response:
    """The login page; sets the double-submit cookie that guards the login form."""
    c = console_of(request)
    return _login_page(request, c.services.settings.public_url, "", 200)


def _login_page(request: Request, public_url: str, error: str, status: int) -> Response:
    token = secrets.token_urlsafe(32)
    response = console_of(request).render(
        request, "login.html", status=status, login_csrf=token, error=error
    )
    response.set_cookie(
        _login_cookie(public_url),
        token,
        max_age=3600,
        path="/",
        secure=sessions.is_https(public_url),
        httponly=True,
        samesite="strict",
    )
    return response


async def login(request: Request) -> Response:
    """Check the password; a new session (and cookie) on success."""
    c = console_of(request)
    public_url = c.services.settings.public_url
    origin = request.headers.get("origin") or request.headers.get("referer")
    form = await request.form()
    token = form.get(sessions.CSRF_FIELD)
    if not sessions.same_origin(origin, c.allowed_origins(request)) or not sessions.tokens_equal(
        token if isinstance(token, str) else None, request.cookies.get(_login_cookie(public_url))
    ):
        return refused(request, 403, "The login was refused (CSRF check failed): reload the page.")
    email = field(form, "email").lower()
    password = form.get("password")
    password = password if isinstance(password, str) else ""
    wait = await throttle.login_refusal(c.services.db, request, email)
    if wait:
        page_429 = _login_page(request, public_url, throttle.retry_message(wait), 429)
        return throttle.too_many(page_429, wait)
    async with c.services.db.read() as conn:
        row = (
            await conn.execute(
                sa.select(agents.c.id, agents.c.password_hash).where(
                    sa.func.lower(agents.c.email) == email, agents.c.disabled_at.is_(None)
                )
            )
        ).one_or_none()
    stored = row.password_hash if row is not None else None
    ok = check_password(stored or _DUMMY_HASH, password) and stored is not None
    if row is None or not ok:
        reason = "unknown_account" if row is None else "wrong_password"
        agent_id = row.id if row is not None else None
        wait = await throttle.login_failed(c.services.db, request, email, agent_id, reason=reason)
        if wait:
            page_429 = _login_page(request, public_url, throttle.retry_message(wait), 429)
            return throttle.too_many(page_429, wait)
        return _login_page(request, public_url, "Wrong email or password.", 401)
    await throttle.login_succeeded(c.services.db, request, email, row.id)
    await c.sessions.end(request.cookies.get(c.cookie))
    value = await c.sessions.create(row.id)
    response = RedirectResponse("/ui/", status_code=303)
    response.set_cookie(
        c.cookie,
        value,
        max_age=int(c.sessions.absolute.total_seconds()),
        path="/",
        secure=sessions.is_https(public_url),
        httponly=True,
        samesite="lax",
    )
    response.delete_cookie(_login_cookie(public_url), path="/")
    return response


@console
async def logout(request: Request, session: Session) -> Response:
    """End the session."""
    c = console_of(request)
    await c.sessions.end(request.cookies.get(c.cookie))
    await audit.request_record(c.services.db, request, "logout", agent_id=session.agent.id)
    response = redirect(request, "/ui/login")
    response.delete_cookie(c.cookie, path="/")
    return response


# -- search --------------------------------------------------------------------------------


async def find_customers(request: Request, session: Session, q: str) -> list[Customer]:
    """Customers for one search box: exact phone (any format) or email, then text search;
    only those the agent's teams may see."""
    c = console_of(request)
    scope = teams(session)
    region = c.services.settings.default_region
    q = q.strip()
    ids: list[str] = []
    async with c.services.db.read() as conn:
        exact: Identity | None = None
        try:
            if "@" in q:
                exact = Identity(IdentityKind.EMAIL, normalize_email(q, field="q"))
            elif sum(ch.isdigit() for ch in q) >= 6:
                exact = Identity(IdentityKind.PHONE, normalize_phone(q, region, field="q"))
        except TimelineError:
            exact = None
        if exact is not None:
            owner = await customer_ops.find(conn, exact)
            if owner and await customer_ops.is_visible(conn, owner, scope):
                ids.append(owner)
        if q:
            ids += await customer_ops.search(conn, q, limit=25, offset=0, teams=scope)
        else:
            ids += await customer_ops.recent(conn, limit=25, offset=0, teams=scope)
        # One batch of queries for the whole list, not four per customer.
        people = await call_ops.customers_many(conn, ids)
    found = [people[cid] for cid in dict.fromkeys(ids) if cid in people]
    return [c for c in found if c.erased_at is None and c.merged_into is None]


@console
async def home(request: Request, session: Session) -> Response:
    """The search page."""
    q = request.query_params.get("q", "")
    results = await find_customers(request, session, q)
    return await page(request, session, "search.html", q=q, results=results)


@console
async def search(request: Request, session: Session) -> Response:
    """Search results (an htmx fragment)."""
    q = request.query_params.get("q", "")
    results = await find_customers(request, session, q)
    return console_of(request).render(
        request, "_results.html", session=session, q=q, results=results
    )


# -- the customer --------------------------------------------------------------------------


def _channels(request: Request) -> list[str]:
    raw = request.query_params.get("channel", "")
    return [c for c in raw.split(",") if c in _CHANNELS]


async def _last_channel(conn: Any, customer: Customer, newest: list[StoredEvent]) -> str:
    """The channel the customer last used (SMS or email), for the composer's default.

    ``newest`` is the first page of the unfiltered timeline: if it holds a message, that
    answers without a query."""
    for event in newest:
        if event.channel in ("sms", "email") and event.kind == Kind.MESSAGE.value:
            return event.channel
    last = (
        await conn.execute(
            sa.select(events.c.channel)
            .where(
                events.c.customer_id == customer.id,
                events.c.channel.in_(["sms", "email"]),
                events.c.kind == Kind.MESSAGE.value,
            )
            .order_by(events.c.occurred_at.desc(), events.c.id.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    if last:
        return str(last)
    return "sms" if customer.phones or not customer.emails else "email"


def _timeline_url(customer_id: str, channels: list[str], cursor: str) -> str:
    from urllib.parse import urlencode

    query = {"cursor": cursor, **({"channel": ",".join(channels)} if channels else {})}
    return f"/ui/customers/{customer_id}/timeline?{urlencode(query)}"


async def render_customer(request: Request, session: Session, **extra: Any) -> Response:
    """The 360 view: identities, consent, attributes, documents, merges, the timeline."""
    c = console_of(request)
    customer_id = request.path_params["id"]
    channels = _channels(request)
    async with c.services.db.read() as conn:
        try:
            customer = await customer_ops.get(conn, customer_id)
        except TimelineError:
            customer = None
        if (
            customer is None
            or customer.erased_at is not None
            or not await customer_ops.is_visible(conn, customer_id, teams(session))
        ):
            return await page(request, session, "error.html", 404, message="No such customer.")
        items, nxt = await store.page(conn, customer_id, limit=PAGE, channels=channels)
        docs = await document_ops.for_customer(conn, customer_id)
        merges = await merge_ops.history(conn, customer_id)
        default_channel = await _last_channel(conn, customer, [] if channels else items)
        calls = await active_pops(request, session, conn)
    return await page(
        request,
        session,
        "customer.html",
        calls=calls,
        customer=customer,
        groups=group_threads(items),
        next_url=_timeline_url(customer_id, channels, nxt) if nxt else None,
        channels=channels,
        all_channels=["sms", "email", "voice", "note", "document"],
        documents=docs,
        merges=merges,
        default_channel=default_channel,
        message=extra.get("message"),
        error=extra.get("error"),
    )


customer_page = console(render_customer)


@console
async def timeline_page(request: Request, session: Session) -> Response:
    """The next page of the timeline (endless scrolling, an htmx fragment)."""
    c = console_of(request)
    customer_id = request.path_params["id"]
    channels = _channels(request)
    if (refusal := await foreign(request, session, customer_id)) is not None:
        return refusal
    try:
        async with c.services.db.read() as conn:
            items, nxt = await store.page(
                conn,
                customer_id,
                limit=PAGE,
                cursor=request.query_params.get("cursor") or None,
                channels=channels,
            )
    except store.BadCursor:
        return refused(request, 400, "Not a valid cursor.")
    return c.render(
        request,
        "_timeline_items.html",
        session=session,
        groups=group_threads(items),
        next_url=_timeline_url(customer_id, channels, nxt) if nxt else None,
    )


@console
async def email_view(request: Request, session: Session) -> Response:
    """An email's body re-rendered with remote (https) images allowed (an htmx fragment)."""
    c = console_of(request)
    async with c.services.db.read() as conn:
        try:
            event = await store.get_event(conn, request.path_params["id"])
        except TimelineError:
            return refused(request, 404, "No such event.")
        if not await customer_ops.is_visible(conn, event.customer_id, teams(session)):
            return refused(request, 404, "No such event.")
    return c.render(request, "_email_remote.html", session=session, event=event)


@console
async def email_body(request: Request, session: Session) -> Response:
    """An email's sanitized HTML as a document of its own, remote https images allowed.

    Only ever shown in ``<iframe sandbox>`` (no scripts, an opaque origin); its CSP
    allows nothing but images.
    """
    c = console_of(request)
    async with c.services.db.read() as conn:
        try:
            event = await store.get_event(conn, request.path_params["id"])
        except TimelineError:
            return refused(request, 404, "No such event.")
        if not await customer_ops.is_visible(conn, event.customer_id, teams(session)):
            return refused(request, 404, "No such event.")
    doc, _ = email_document(event.html or "", remote_images=True)
    return HTMLResponse(
        doc,
        headers={
            "Content-Security-Policy": f"{EMAIL_CSP_IMAGES}; frame-ancestors 'self'; sandbox",
            "X-Frame-Options": "SAMEORIGIN",
        },
    )


# -- actions on the customer ---------------------------------------------------------------


async def _after(request: Request, session: Session, **extra: Any) -> Response:
    """The customer's page again (with a message), after an action."""
    return await render_customer(request, session, **extra)


async def _publish(request: Request, stored: list[StoredEvent]) -> None:
    publisher = console_of(request).services.publisher
    for event in stored:
        publisher.publish("timeline", event)


@console
async def send(request: Request, session: Session) -> Response:
    """The composer: an SMS, an email (with documents attached) or an internal note."""
    c = console_of(request)
    settings = c.services.settings
    form = await form_of(request)
    customer_id = request.path_params["id"]
    if (refusal := await foreign(request, session, customer_id)) is not None:
        return refusal
    channel = field(form, "channel")
    text = field(form, "text")
    subject = field(form, "subject") or None
    attachments = [str(v) for v in form.getlist("attachments") if isinstance(v, str)]
    if not text:
        return _composer_result(request, session, error="Write a message first.", status=422)
    needs = {"sms": "twilio", "email": "smtp"}.get(channel)
    if channel not in ("sms", "email", "note"):
        return _composer_result(request, session, error="Choose SMS, email or note.", status=422)
    if needs and not settings.channel_enabled(needs):
        return _composer_result(
            request, session, error=f"The {channel} channel is not configured.", status=422
        )
    if channel == "sms" and len(text) > 1600:
        return _composer_result(
            request, session, error="At most 1600 characters by SMS.", status=422
        )
    try:
        async with c.services.db.write() as conn:
            if channel == "sms":
                event = await queue_sms(
                    conn, settings, customer_id=customer_id, text=text, author=session.agent.id
                )
            elif channel == "email":
                reply_to = field(form, "reply_to") or None
                event = await queue_email(
                    conn,
                    settings,
                    customer_id=customer_id,
                    text=text,
                    subject=subject,
                    reply_to=reply_to,
                    attachments=attachments,
                    author=session.agent.id,
                )
            else:
                await customer_ops.require_active(conn, customer_id)
                note = Event(
                    channel=Channel.NOTE,
                    kind=Kind.NOTE,
                    direction=Direction.INTERNAL,
                    occurred_at=utcnow(),
                    text=text,
                    customer_id=customer_id,
                    data={"author": session.agent.id},
                )
                result = await ingest_batch(conn, [note], region=settings.default_region)
                stored = result.outcomes[0].event
                assert stored is not None
                event = stored
    except Refused as exc:
        return _composer_result(request, session, error=f"Not sent: {exc}.", status=409)
    except TimelineError as exc:
        return _composer_result(request, session, error=f"Not sent: {exc}", status=409)
    await _publish(request, [event])
    what = {"sms": "SMS queued", "email": "Email queued", "note": "Note added"}[channel]
    return _composer_result(request, session, message=f"{what}.", event=event)


def _composer_result(
    request: Request,
    session: Session,
    *,
    message: str = "",
    error: str = "",
    status: int = 200,
    event: StoredEvent | None = None,
) -> Response:
    return console_of(request).render(
        request,
        "_composer_status.html",
        status=status if not request.headers.get("hx-request") else 200,
        session=session,
        message=message,
        error=error,
        event=event,
    )


def _identity(kind: str, value: str, region: str) -> Identity:
    if kind == "email":
        return Identity(IdentityKind.EMAIL, normalize_email(value, field="value"))
    return Identity(IdentityKind.PHONE, normalize_phone(value, region, field="value"))


@console
async def edit_identities(request: Request, session: Session) -> Response:
    """Add (``action=add``) or remove (``action=remove``) a phone or an email."""
    c = console_of(request)
    form = await form_of(request)
    customer_id = request.path_params["id"]
    if (refusal := await foreign(request, session, customer_id)) is not None:
        return refusal
    action, kind, value = field(form, "action"), field(form, "kind"), field(form, "value")
    try:
        ident = _identity(kind, value, c.services.settings.default_region)
        async with c.services.db.write() as conn:
            if action == "remove":
                await customer_ops.update(conn, customer_id, remove=[ident])
            else:
                await customer_ops.update(conn, customer_id, add=[ident])
    except TimelineError as exc:
        return await _after(request, session, error=str(exc))
    done = "Removed" if action == "remove" else "Added"
    return await _after(request, session, message=f"{done} {ident.value}.")


@console
async def edit_attributes(request: Request, session: Session) -> Response:
    """Set an attribute (or delete it with an empty value); rename the customer."""
    c = console_of(request)
    form = await form_of(request)
    customer_id = request.path_params["id"]
    if (refusal := await foreign(request, session, customer_id)) is not None:
        return refusal
    key, value = field(form, "key"), field(form, "value")
    fields: dict[str, Any] = {}
    if "name" in form:
        fields["name"] = field(form, "name") or None
    patch = {key[:100]: value or None} if key else None
    try:
        async with c.services.db.write() as conn:
            await customer_ops.update(conn, customer_id, attributes=patch, **fields)
    except TimelineError as exc:
        return await _after(request, session, error=str(exc))
    return await _after(request, session, message="Saved.")


@console
async def merge(request: Request, session: Session) -> Response:
    """Merge another customer (by id, phone or email) into this one."""
    c = console_of(request)
    form = await form_of(request)
    target_id = request.path_params["id"]
    if (refusal := await foreign(request, session, target_id)) is not None:
        return refusal
    other = field(form, "other")
    try:
        async with c.services.db.write() as conn:
            other_id: str | None = None
            try:
                await customer_ops.require_exists(conn, other)
                other_id = other
            except TimelineError:
                ident = _identity(
                    "email" if "@" in other else "phone", other, c.services.settings.default_region
                )
                other_id = await customer_ops.find(conn, ident)
            if not other_id or not await customer_ops.is_visible(conn, other_id, teams(session)):
                return await _after(request, session, error=f"No customer {other!r}.")
            await merge_ops.merge(conn, target_id, other_id, actor=session.agent.id)
    except TimelineError as exc:
        return await _after(request, session, error=str(exc))
    return await _after(request, session, message="Merged. You can undo it below.")


@console
async def undo_merge(request: Request, session: Session) -> Response:
    """Undo a merge (supervisors and admins, as in the API)."""
    c = console_of(request)
    if not session.agent.has_role("supervisor"):
        return refused(request, 403, "Undoing a merge needs the supervisor role.")
    try:
        async with c.services.db.write() as conn:
            target_id, _ = await merge_ops.unmerge(conn, request.path_params["id"])
    except TimelineError as exc:
        return refused(request, 409, str(exc))
    return redirect(request, f"/ui/customers/{target_id}")


# -- calls ---------------------------------------------------------------------------------


@console
async def recording(request: Request, session: Session) -> Response:
    """A call's recording for the console's audio player (session cookie; the API's
    ``/api/v1/calls/{id}/recording`` needs a bearer token an ``<audio>`` cannot send).

    Same checks as the API: a call of a customer the agent may see, with a completed
    recording, else 404; streamed from the provider with ``Range`` honoured.
    """
    c = console_of(request)
    async with c.services.db.read() as conn:
        try:
            event = await store.get_event(conn, request.path_params["id"])
        except TimelineError:
            return refused(request, 404, "No such call.")
        visible = await customer_ops.is_visible(conn, event.customer_id, teams(session))
    if event.channel != Channel.VOICE.value or not visible or not recording_of(event):
        return refused(request, 404, "No such recording.")
    settings = c.services.settings
    if not settings.channel_enabled("twilio"):
        return refused(request, 502, "The twilio channel is not configured.")
    try:
        return await stream_recording(
            settings,
            str(event.data["recording"]["sid"]),
            range_header=request.headers.get("range"),
        )
    except ApiError as exc:
        return refused(request, exc.status, "The recording cannot be had from the provider.")


@console
async def calls_page(request: Request, session: Session) -> Response:
    """The calls ringing or in progress."""
    return await page(request, session, "calls.html")
