"""The smuggling corpus: request bytes that have desynchronised proxies and servers
(CL.TE, TE.CL, TE.TE obfuscations, obs-fold, bare LF, odd Content-Lengths, chunk-size
tricks, pipelining across sessions, absolute-form targets, early upgrade bytes), each sent
to a real siesta in front of recording backends (see tests/fuzzing.py).

Each case is a file in tests/corpus/smuggling/: comment lines (`# `, ending in LF) with
its reason, the sessions its requests are for (`sessions: alice bob`), the outcome per
request (`expect: 200 400 -`: 200 is "answered by that session's backend, which got it
exactly once", another status is the gateway's own answer, and no backend got the request
whole (one that got its head before an error in its body had that connection closed),
`-` is "no answer, never forwarded"), optionally the body the backend must get
(`body: b'...'`) and the routing mode (`routing: host`); then the raw bytes, exactly as
sent. `Tk@@@@@@@1kT`, `Tk@@@@@@@2kT` are the places of the requests' tokens.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .fuzzing import PLACEHOLDER, SESSIONS, Conversation, Exchange, FuzzGateway, new_token

CORPUS = Path(__file__).with_name("corpus") / "smuggling"
CASES = sorted(CORPUS.glob("*.http"))


@dataclass
class Case:
    why: str
    sessions: list[str]
    expect: list[str]
    body: bytes | None
    routing: str
    raw: bytes


def load(path: Path) -> Case:
    """A corpus file: its `# key: value` lines, then its bytes."""
    data = path.read_bytes()
    meta: dict[str, str] = {}
    why = ""
    while data.startswith(b"# "):
        line, _, data = data.partition(b"\n")
        key, sep, value = line[2:].decode().partition(": ")
        if sep and key in ("sessions", "expect", "body", "routing"):
            meta[key] = value
        else:
            why = line[2:].decode()
    body = ast.literal_eval(meta["body"]) if "body" in meta else None
    sessions, expect = meta["sessions"].split(), meta["expect"].split()
    assert len(sessions) == len(expect), f"{path.name}: one expected outcome per request"
    return Case(why, sessions, expect, body, meta.get("routing", "path"), data)


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], FuzzGateway]]:
    """A siesta per routing mode, started when a case first needs it."""
    running: dict[str, FuzzGateway] = {}

    def get(routing: str) -> FuzzGateway:
        if routing not in running:
            folder = tmp_path_factory.mktemp(f"corpus-{routing}")
            running[routing] = FuzzGateway(folder, {"routing": routing})
        return running[routing]

    yield get
    for gateway in running.values():
        gateway.stop()


def test_corpus_is_there() -> None:
    """The corpus is found, and every file in it is well-formed."""
    assert len(CASES) >= 60
    for path in CASES:
        case = load(path)
        assert case.why
        assert case.raw
        assert PLACEHOLDER.replace(b"@@@@@@@@", b"@@@@@@@1") in case.raw, path.name


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_smuggling_case(path: Path, gateways: Callable[[str], FuzzGateway]) -> None:
    """The case's outcome is the expected one, and no byte of it leaks anywhere."""
    case = load(path)
    gateway = gateways(case.routing)
    raw = case.raw
    exchanges = []
    for i, session in enumerate(case.sessions):
        token = new_token()
        raw = raw.replace(b"Tk@@@@@@@%dkT" % (i + 1), token)
        exchanges.append(Exchange(token, session if session in SESSIONS else None, b"", b""))
    exchanges[0].wire = raw
    body = case.body
    for i, exchange in enumerate(exchanges):
        if body is not None:
            body = body.replace(b"Tk@@@@@@@%dkT" % (i + 1), exchange.token)
    conv = Conversation(exchanges)
    done = gateway.round([conv])
    done.check()
    responses, _ = conv.responses()
    at_backends = {}
    for request in done.requests:
        for exchange in exchanges:
            if exchange.token in request.target:
                at_backends.setdefault(exchange.token, []).append(request)
    for i, (exchange, want) in enumerate(zip(exchanges, case.expect, strict=True)):
        got = responses[i] if i < len(responses) else None
        reached = at_backends.get(exchange.token, [])
        where = f"{path.name}, request {i + 1}: {case.why}\n{done.explain()}"
        if want == "-":
            assert got is None, where
            assert not reached, where
        elif want == "200":
            assert got is not None, where
            assert got.seen == (exchange.session, exchange.token), where
            assert len(reached) == 1, where
            if i == 0 and body is not None:
                assert reached[0].body == body, where
        else:
            assert got is not None, where
            assert (got.status, got.seen) == (int(want), None), where
            assert not reached, where
