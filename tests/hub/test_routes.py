"""The app's route order (webhooks, then ``HOT_PATHS``, then the rest) changes no match.

Starlette answers with the first route whose pattern matches the path and the method
(else the first that matches the path only: 405). ``create_app`` tries the hot API paths
before the others, so every path a route serves must still reach the route it reached in
the declaration order (webhooks, ``/``, ``/openapi.json``, ``ENDPOINTS``, the console).
"""

from __future__ import annotations

import re
from pathlib import Path

from starlette.routing import BaseRoute, Match, Mount, Route

from hub.app import ENDPOINTS, HOT_PATHS, create_app
from tests.hub.conftest import hub_settings

_PARAM = re.compile(r"{[^}]+}")


def _declared_rank(route: BaseRoute) -> int:
    """The route's place in the declaration order."""
    path = getattr(route, "path", "")
    if path.startswith("/webhooks/"):
        return 0
    if path in ("/", "/openapi.json"):
        return 1
    for i, endpoint in enumerate(ENDPOINTS):
        if endpoint.path == path:
            return 2 + i
    assert isinstance(route, Mount), f"unexpected route {route!r}"
    return 10_000


def _resolve(routes: list[BaseRoute], method: str, path: str) -> BaseRoute | None:
    """The route Starlette's router hands ``method path`` to."""
    scope = {"type": "http", "method": method, "path": path, "root_path": ""}
    partial = None
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return route
        if match is Match.PARTIAL and partial is None:
            partial = route
    return partial


def _sample_paths(route: BaseRoute) -> list[str]:
    path = getattr(route, "path", "")
    if isinstance(route, Mount):
        return [path + "/", path + "/customers/x1"]
    return [_PARAM.sub(value, path) for value in ("x1", "me", "timeline")]


def test_the_hot_paths_are_tried_first_and_change_no_match(tmp_path: Path) -> None:
    app = create_app(
        hub_settings(f"sqlite+aiosqlite:///{tmp_path}/hub.db", tmp_path / "files"),
        run_workers=False,
    )
    served = list(app.routes)
    declared = sorted(served, key=_declared_rank)
    assert served != declared, "no route was moved: the test checks nothing"
    first_api = next(i for i, r in enumerate(served) if _declared_rank(r) > 0)
    hot = {getattr(r, "path", "") for r in served[first_api : first_api + len(HOT_PATHS)]}
    assert hot == set(HOT_PATHS)
    methods = ("GET", "HEAD", "POST", "PATCH", "DELETE", "PUT")
    checked = 0
    for route in served:
        for path in _sample_paths(route):
            for method in methods:
                assert _resolve(served, method, path) is _resolve(declared, method, path), (
                    method,
                    path,
                )
                checked += 1
    assert checked > 100


def test_the_check_sees_a_moved_route_that_would_shadow_another() -> None:
    """The comparison above bites: a catch-all moved first takes another route's paths."""

    async def endpoint(_: object) -> None:
        raise AssertionError("not called")

    timeline = Route("/api/v1/customers/{id}/timeline", endpoint, methods=["GET"])
    catch_all = Route("/api/v1/customers/{id}/{part}", endpoint, methods=["GET"])
    path = "/api/v1/customers/x1/timeline"
    assert _resolve([timeline, catch_all], "GET", path) is timeline
    assert _resolve([catch_all, timeline], "GET", path) is catch_all
