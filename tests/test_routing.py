"""The route table's matching: a path without parameters, once matched, is answered from a
table of its own; the answers stay those of the full scan in declaration order."""

from __future__ import annotations

import pytest

from nagare.access import Permission
from nagare.errors import BadRequest, MethodNotAllowed, NotFound
from nagare.http.routing import Route, Router


def _route(method: str, path: str) -> Route:
    return Route(method, path, lambda request: {}, f"{method} {path}", permission=Permission.READ)


ROUTES = [
    _route("GET", "/api/things/{dag_id}"),
    _route("GET", "/api/things/new"),  # never reached with GET: the route above comes first
    _route("POST", "/api/things/new"),
    _route("GET", "/api/plain"),
]


@pytest.mark.parametrize("round_", [1, 2, 3])  # the first scans, the next ones look up
def test_a_match_is_the_first_declared_route_every_time(round_: int) -> None:
    router = Router(ROUTES)
    for _ in range(round_):
        route, params = router.match("POST", "/api/things/new")
        assert (route.method, route.path, params) == ("POST", "/api/things/new", {})
        route, params = router.match("GET", "/api/things/new")
        assert (route.path, params) == ("/api/things/{dag_id}", {"dag_id": "new"})
        route, params = router.match("GET", "/api/plain/")  # the slashes around do not count
        assert (route.path, params) == ("/api/plain", {})


def test_a_looked_up_path_still_refuses_other_methods_and_bad_parameters() -> None:
    router = Router(ROUTES)
    router.match("GET", "/api/plain")
    router.match("GET", "/api/plain")
    with pytest.raises(MethodNotAllowed) as refused:
        router.match("DELETE", "/api/plain")
    assert refused.value.allow == ["GET"]
    with pytest.raises(NotFound):
        router.match("GET", "/api/plain/more")
    with pytest.raises(BadRequest, match="not a valid dag id"):
        router.match("GET", "/api/things/bad%20id")
    params = router.match("GET", "/api/plain")[1]
    params["x"] = "y"  # a caller's change does not reach the next answer
    assert router.match("GET", "/api/plain")[1] == {}
