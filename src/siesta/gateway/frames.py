"""Which websocket frames are activity: a frame scanner for the gateway's tunnels.

For a template that ignores websocket control frames (`activity.ignore`), each side of
a tunnelled websocket gets a `FrameScanner`. It follows the frames across reads,
looking only at their headers (2 to 14 bytes each) and skipping payloads by their
length, so a large message costs as little as a small one. A read that carried any
part of a data frame (text, binary, continuation, close) is activity; one that
carried only ping and pong frames is not.
"""

from __future__ import annotations

PING, PONG = 0x9, 0xA


class FrameScanner:
    """Follows the websocket frames of one direction of a tunnel."""

    __slots__ = ("_data", "_head", "_skip")

    def __init__(self) -> None:
        self._head = b""  # bytes of a frame header received so far
        self._skip = 0  # payload bytes of the current frame still to come
        self._data = False  # whether the current frame is a data frame

    def feed(self, data: bytes) -> bool:
        """Whether `data` (the next bytes of the stream) carried any data frame."""
        active = False
        at, size = 0, len(data)
        while at < size:
            if self._skip:
                step = min(self._skip, size - at)
                self._skip -= step
                at += step
                active = active or self._data
                continue
            head = self._head + data[at : at + 14]
            need = _header_size(head)
            if need is None or len(head) < need:
                self._head = head  # the first byte already tells the frame's kind
                return active or head[0] & 0x0F not in (PING, PONG)
            at += need - len(self._head)
            self._head = b""
            self._data = head[0] & 0x0F not in (PING, PONG)
            self._skip = _payload_size(head)
            active = active or self._data
        return active


def _header_size(head: bytes) -> int | None:
    """The full header's size, once its first two bytes are known."""
    if len(head) < 2:
        return None
    length = head[1] & 0x7F
    extra = 2 if length == 126 else 8 if length == 127 else 0
    return 2 + extra + (4 if head[1] & 0x80 else 0)


def _payload_size(head: bytes) -> int:
    length = head[1] & 0x7F
    if length == 126:
        return int.from_bytes(head[2:4], "big")
    if length == 127:
        return int.from_bytes(head[2:10], "big")
    return length
