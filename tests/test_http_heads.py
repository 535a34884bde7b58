"""Header handling on raw bytes: hop-by-hop lines are removed, framing is read."""

from siesta.gateway.http import HeadFacts, extra_hop_headers


def test_plain_head_is_kept_as_is() -> None:
    """No hop-by-hop header: the block is relayed unchanged, size known from the length."""
    lines = b"Server: x\r\nContent-Length: 5\r\n"
    facts = HeadFacts(lines)
    assert facts.kept is lines
    assert facts.sized
    assert not facts.chunked
    assert facts.connection is None


def test_hop_by_hop_lines_are_removed_whatever_their_case() -> None:
    """Connection, Keep-Alive and Transfer-Encoding go; the others stay, in order."""
    lines = (
        b"Server: x\r\nCONNECTION: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\n"
        b"X-Secret: 1\r\nTransfer-Encoding: chunked\r\nX-Kept: yes\r\n"
    )
    facts = HeadFacts(lines)
    assert facts.chunked
    assert not facts.sized
    assert facts.connection == b"keep-alive, X-Secret"
    assert facts.kept == b"Server: x\r\nX-Secret: 1\r\nX-Kept: yes\r\n"
    facts.drop(extra_hop_headers(facts.connection))
    assert facts.kept == b"Server: x\r\nX-Kept: yes\r\n"


def test_repeated_hop_header_is_removed_every_time() -> None:
    """A header that appears twice is removed twice."""
    facts = HeadFacts(b"Connection: close\r\nA: 1\r\nconnection: keep-alive\r\n")
    assert facts.kept == b"A: 1\r\n"


def test_header_names_that_only_start_like_hop_headers_stay() -> None:
    """`TE` is hop-by-hop; `TEX` and `X-Connection` are not."""
    lines = b"TEX: 1\r\nX-Connection: 2\r\nTE: trailers\r\n"
    assert HeadFacts(lines).kept == b"TEX: 1\r\nX-Connection: 2\r\n"


def test_plain_connection_values_name_no_extra_headers() -> None:
    """keep-alive, close and upgrade name no header; other tokens do."""
    assert extra_hop_headers(b"Keep-Alive") == frozenset()
    assert extra_hop_headers(b"close, X-A ,x-b") == {b"x-a", b"x-b"}
