"""The router: request head -> session and forwarded target."""

from siesta.core.routing import Route, Router


def test_path_routing_strips_prefix() -> None:
    """/s/alice/x?y goes to alice as /x?y."""
    assert Router("path").route(b"/s/alice/x?y=1", None, None) == Route("alice", b"/x?y=1")


def test_path_routing_keeps_prefix_when_asked() -> None:
    """strip_prefix=false forwards the whole target."""
    router = Router("path", strip_prefix=False)
    assert router.route(b"/s/alice/x", None, None) == Route("alice", b"/s/alice/x")


def test_path_without_trailing_slash_redirects() -> None:
    """/s/alice and /s/alice?q redirect to the slash form, keeping the query."""
    router = Router("path")
    assert router.route(b"/s/alice", None, None).redirect == b"/s/alice/"
    assert router.route(b"/s/alice?q=1", None, None).redirect == b"/s/alice/?q=1"


def test_path_without_session_is_an_error() -> None:
    """A path outside /s/ names no session."""
    route = Router("path").route(b"/favicon.ico", None, None)
    assert route.session is None
    assert route.error is not None


def test_invalid_session_name_is_refused() -> None:
    """Names with characters outside the id alphabet never reach the session table."""
    assert Router("path").route(b"/s/a%2e./x", None, None).error == "not a valid session name"


def test_host_routing() -> None:
    """<session>.<domain>[:port] routes to the session, case-insensitively."""
    router = Router("host", domain="example.test")
    assert router.route(b"/a", b"Bob.Example.test:8080", None) == Route("bob", b"/a")
    assert router.route(b"/a", b"example.test", None).error is not None
    assert router.route(b"/a", b"[::1]:8080", None).error is not None
    assert router.route(b"/a", None, None).error is not None


def test_header_routing() -> None:
    """The session header names the session; without it there is none."""
    router = Router("header")
    assert router.route(b"/a", None, b" carol ") == Route("carol", b"/a")
    assert router.route(b"/a", None, None).error is not None
