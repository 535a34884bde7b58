"""The gateway under Hypothesis: generated requests over real sockets to a real siesta in
front of recording backends (tests/fuzzing.py says what each round checks).

Requests vary in method, target (origin, absolute and odd forms, for alice, bob, an
unknown session or none), version, Host, header names and values (odd bytes included),
separators, line endings, framing (none, Content-Length, chunked, and the smuggling
alphabet: CL.TE, duplicate and odd Content-Lengths, Transfer-Encoding obfuscations,
obs-fold, chunk-size tricks), bodies that hide requests, Connection options and
upgrades; several go pipelined on one connection, across sessions, while other
connections run beside them, each cut into writes at drawn places.

`make test` runs a fixed-seed profile of a few dozen rounds; `make fuzz` sets
SIESTA_FUZZ=long for thousands (SIESTA_FUZZ_EXAMPLES to choose how many).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .fuzzing import SESSIONS, Conversation, Exchange, FuzzGateway, new_token

settings.register_profile(
    "siesta-quick",
    max_examples=40,
    derandomize=True,  # a fixed seed: the same rounds on every run
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "siesta-long",
    max_examples=int(os.environ.get("SIESTA_FUZZ_EXAMPLES", "3000")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
PROFILE = "siesta-long" if os.environ.get("SIESTA_FUZZ") == "long" else "siesta-quick"

METHODS = [b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"PATCH"]
ODD_METHODS = [b"CONNECT", b"TRACE", b"get", b"G\x00T", b"PRI", b"M-SEARCH", b"X" * 30, b""]
TCHAR = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
SAFE_VALUE = bytes(range(0x20, 0x7F))  # visible ASCII and space
HEADER_NAMES = [
    b"Accept",
    b"X-A",
    b"Cookie",
    b"User-Agent",
    b"Expect",
    b"TE",
    b"Trailer",
    b"Keep-Alive",
    b"Proxy-Connection",
    b"Upgrade",
    b"X-Siesta-Session",
    b"X-Forwarded-For",
    b"X-Forwarded-Host",
    b"X-Forwarded-Proto",
    b"Forwarded",
    b"Content-Type",
    b"Via",
    b"Host",
    b"Content-Length",
    b"Transfer-Encoding",
    b"Connection",
]
SUFFIXES = [b"", b"/", b"/a/b?c=d", b"?q=1", b"/%2e%2e/x", b"/..", b"#frag", b"/a%00b"]
TE_VALUES = [
    b"xchunked",
    b" chunked",
    b"chunked, identity",
    b"identity, chunked",
    b"\tchunked",
    b"CHUNKED",
    b"chunked ",
    b"chunk",
    b"chunked;q=1",
    b"gzip, chunked",
    b"\x0bchunked",
]
CL_FORMS = [b"+%d", b"-%d", b"0x%x", b"000%d", b"%d ", b" %d", b"%d, %d", b"%d %d", b""]
FRAMINGS = [
    "none",
    "cl",
    "chunked",
    "cl+te",
    "te+cl",
    "te-odd",
    "te-twice",
    "cl-twice-same",
    "cl-twice-other",
    "cl-odd",
    "cl-short",
    "cl-long",
    "cl-huge",
    "chunk-ext",
    "chunk-odd",
    "obs-fold",
]
CLEAN_FRAMINGS = {"none", "cl", "chunked", "chunk-ext"}
CHUNK_ODD = [
    b"%x\r\n%s\r\n0\r\n\r\n",  # fine, for contrast
    b"%X\r\n%s\r\n0\r\n\r\n",
    b"1%016x\r\n%s\r\n0\r\n\r\n",  # overflow
    b"%x\r\n%s0\r\n\r\n",  # no CRLF after the data
    b"%x\n%s\n0\n\n",  # bare LF
    b"%x \r\n%s\r\n0\r\n\r\n",  # space after the size
    b"0x%x\r\n%s\r\n0\r\n\r\n",
    b'%x;a="\r\n"\r\n%s\r\n0\r\n\r\n',
    b"%x\r\n%s\r\n0\r\nContent-Length: 9\r\n\r\n",
]


@dataclass
class Spec:
    """A request as drawn, before it gets its token."""

    method: bytes
    session: str  # alice, bob, nobody or "" (no /s/ prefix)
    form: str  # origin, absolute, odd
    suffix: bytes
    version: bytes
    host: str  # one, none, two, other
    headers: list[tuple[bytes, bytes, bytes]]  # name, separator, value
    framing: str
    variant: int  # which odd form of the framing
    body: bytes
    hidden: bool  # the body holds a request of its own
    connection: bytes | None
    bare_lf: bool  # one line ends in LF alone
    clean: bool


@st.composite
def header(draw: st.DrawFn) -> tuple[tuple[bytes, bytes, bytes], bool]:
    """A header line's parts, and whether it is well-formed."""
    clean = True
    kind = draw(st.integers(0, 9))
    if kind < 6:
        name = draw(st.sampled_from(HEADER_NAMES[:17]))
    elif kind < 9:
        name = draw(
            st.binary(min_size=1, max_size=8).map(lambda b: bytes(TCHAR[c % len(TCHAR)] for c in b))
        )
    else:
        name = draw(st.binary(min_size=0, max_size=6))
        clean = False
    if kind < 8 and draw(st.integers(0, 5)) > 0:
        value = bytes(SAFE_VALUE[c % len(SAFE_VALUE)] for c in draw(st.binary(max_size=20)))
        value = value.strip()
    else:
        value = draw(st.binary(max_size=20))
        clean = False
    separator = draw(st.sampled_from([b": ", b": ", b":", b":\t", b" : ", b":\r\n "]))
    if separator in (b" : ", b":\r\n "):
        clean = False
    if name.lower() in (b"host", b"expect", b"upgrade") and clean:
        name = b"X-" + name  # Host and upgrades are drawn apart; Expect waits for a 100
    return (name, separator, value), clean


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    clean = True
    if draw(st.integers(0, 7)):
        method = draw(st.sampled_from(METHODS))
    else:
        method = draw(st.sampled_from(ODD_METHODS))
        clean = False
    session = draw(st.sampled_from(["alice", "bob", "alice", "bob", "nobody", ""]))
    form = draw(st.sampled_from(["origin"] * 6 + ["absolute", "odd"]))
    suffix = draw(st.sampled_from(SUFFIXES))
    if form == "odd" or b"%00" in suffix or b"#" in suffix:
        clean = False
    version = draw(st.sampled_from([b"HTTP/1.1"] * 8 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2"]))
    host = draw(st.sampled_from(["one"] * 6 + ["none", "two", "other"]))
    drawn = draw(st.lists(header(), max_size=4))
    headers = [line for line, _ in drawn]
    clean = clean and all(ok for _, ok in drawn)
    if any(name.lower() in (b"content-length", b"transfer-encoding") for name, _, _ in headers):
        clean = False
    framing = draw(st.sampled_from(FRAMINGS))
    variant = draw(st.integers(0, 20))
    body = draw(st.binary(max_size=120))
    hidden = draw(st.integers(0, 4)) == 0
    connection = draw(st.sampled_from([None, None, None, b"close", b"keep-alive", b"Upgrade"]))
    bare_lf = draw(st.integers(0, 15)) == 0
    if framing not in CLEAN_FRAMINGS or connection == b"Upgrade" or bare_lf:
        clean = False
    if version == b"HTTP/1.0" and framing in ("chunked", "chunk-ext"):
        clean = False
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or host in ("two", "other"):
        clean = False
    if host == "none" and version == b"HTTP/1.1":
        clean = False
    if form == "absolute" and host != "one":
        clean = False
    return Spec(
        method, session, form, suffix, version, host, headers, framing, variant, body, hidden,
        connection, bare_lf, clean,
    )  # fmt: skip


def render(spec: Spec, token: bytes) -> Exchange:
    """The request's bytes, with `token` in its target, an X-Tok header and its body."""
    path = (b"/s/%s/" % spec.session.encode() if spec.session else b"/") + token + spec.suffix
    if spec.form == "absolute":
        target = b"http://t" + path
    elif spec.form == "odd":
        target = [b"*", b"/" + path, path[1:], b"/s/alice/../bob/" + token, path + b" x"][
            spec.variant % 5
        ]
    else:
        target = path
    routed = _routed(target)
    body = spec.body
    if spec.hidden:
        body = b"GET /s/bob/%s/hidden HTTP/1.1\r\nHost: t\r\n\r\n" % token + body
    if body:
        body = token + body
    lines = [spec.method + b" " + target + b" " + spec.version]
    if spec.host == "one":
        lines.append(b"Host: t")
    elif spec.host == "two":
        lines += [b"Host: t", b"Host: u"]
    elif spec.host == "other":
        lines.append(b"Host: other.example")
    lines += [name + separator + value for name, separator, value in spec.headers]
    framed, wire_body, sent_body = _framing(spec, body)
    lines += framed
    if spec.connection is not None:
        lines.append(b"Connection: " + spec.connection)
        if spec.connection == b"Upgrade":
            lines.append(b"Upgrade: websocket")
    lines.append(b"X-Tok: " + token)
    eols = [b"\r\n"] * (len(lines) + 1)
    if spec.bare_lf:
        eols[spec.variant % len(eols)] = b"\n"
    head = b"".join(line + eol for line, eol in zip(lines, eols, strict=False)) + eols[-1]
    closes = spec.connection == b"close" or (
        spec.version == b"HTTP/1.0" and spec.connection != b"keep-alive"
    )
    return Exchange(
        token,
        routed,
        spec.method,
        head + wire_body,
        sent_body,
        clean=spec.clean,
        closes=closes or (not routed and bool(sent_body)),  # answered at its head: closes
    )


def _routed(target: bytes) -> str | None:
    """The session path routing picks for `target` (by its raw /s/<name>/ prefix, so
    `/s/alice/../bob/` is alice's, whose backend gets `/../bob/`)."""
    if target.startswith(b"http://t/"):
        target = target[len(b"http://t") :]
    if not target.startswith(b"/s/"):
        return None
    name = target[3:].partition(b"/")[0].decode("latin-1")
    return name if name in SESSIONS and b"/" in target[3:] else None


def _framing(spec: Spec, body: bytes) -> tuple[list[bytes], bytes, bytes]:
    """Header lines, the bytes after the head, and the body a backend should get."""
    framing, n, size = spec.framing, spec.variant, len(body)
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (size, body) if body else b"0\r\n\r\n"
    if framing == "none":
        return [], b"", b""
    if framing == "cl":
        return [b"Content-Length: %d" % size], body, body
    if framing == "chunked":
        cut = n % (size + 1)
        parts = [p for p in (body[:cut], body[cut:]) if p]
        wire = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
        return [b"Transfer-Encoding: chunked"], wire, body
    if framing == "chunk-ext":
        return (
            [b"Transfer-Encoding: chunked"],
            b"%x;x=%d\r\n%s\r\n0\r\n\r\n" % (size, n, body) if body else b"0;e\r\n\r\n",
            body,
        )
    if framing == "cl+te":
        return [b"Content-Length: %d" % len(chunked), b"Transfer-Encoding: chunked"], chunked, b""
    if framing == "te+cl":
        return [b"Transfer-Encoding: chunked", b"Content-Length: %d" % (n % 8)], chunked, b""
    if framing == "te-odd":
        return [b"Transfer-Encoding: " + TE_VALUES[n % len(TE_VALUES)]], chunked, b""
    if framing == "te-twice":
        return [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"], chunked, b""
    if framing == "cl-twice-same":
        return [b"Content-Length: %d" % size] * 2, body, b""
    if framing == "cl-twice-other":
        return [b"Content-Length: %d" % size, b"Content-Length: %d" % (size + 1 + n)], body, b""
    if framing == "cl-odd":
        form = CL_FORMS[n % len(CL_FORMS)]
        value = form % ((size,) * form.count(b"%")) if b"%" in form else form
        return [b"Content-Length: " + value], body, b""
    if framing == "cl-short":
        return [b"Content-Length: %d" % max(0, size - 1 - n)], body, b""
    if framing == "cl-long":
        return [b"Content-Length: %d" % (size + 1 + n * 10)], body, b""
    if framing == "cl-huge":
        value = [b"18446744073709551615", b"9223372036854775808", b"99999999999999999999"][n % 3]
        return [b"Content-Length: " + value], body, b""
    if framing == "chunk-odd":
        form = CHUNK_ODD[n % len(CHUNK_ODD)]
        return [b"Transfer-Encoding: chunked"], form % (size, body), b""
    # obs-fold: a Content-Length continued on the next line
    return [b"Content-Length:", b" %d" % size], body, b""


@st.composite
def rounds(draw: st.DrawFn) -> list[tuple[list[Spec], list[int]]]:
    """One to three connections, each with one to three requests and cuts into writes."""
    conversation = st.tuples(
        st.lists(specs(), min_size=1, max_size=3),
        st.lists(st.integers(0, 600), max_size=3),
    )
    return draw(st.lists(conversation, min_size=1, max_size=3))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzGateway]:
    gw = FuzzGateway(tmp_path_factory.mktemp("fuzz"))
    yield gw
    gw.stop()


@settings(settings.get_profile(PROFILE))
@given(drawn=rounds())
def test_no_exchange_reaches_another(gateway: FuzzGateway, drawn: list) -> None:
    """Whatever the requests, the gateway answers or closes every connection in time,
    lives on, never lets a byte of one exchange into another (client or backend), never
    passes a backend a request it did not frame, and serves well-formed requests as sent."""
    conversations = [
        Conversation([render(spec, new_token()) for spec in specs_], cuts) for specs_, cuts in drawn
    ]
    gateway.round(conversations).check()
