"""The smallest real backend, for tests that start hundreds: stdlib asyncio only.

    python -S tests/tiny_backend.py PORT SESSION [DELAY]

Waits DELAY seconds (a slow start), then answers every request with
"hello from SESSION pid PID". Records each start in $SIESTA_TEST_STARTS, like
tests/backend.py, so tests can count starts.
"""

import asyncio
import os
import sys
import time

PORT, SESSION = int(sys.argv[1]), sys.argv[2]
DELAY = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
BODY = f"hello from {SESSION} pid {os.getpid()}\n".encode()
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (
    len(BODY),
    BODY,
)


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head:
                break
            writer.write(ANSWER)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main() -> None:
    server = await asyncio.start_server(serve, "127.0.0.1", PORT, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    starts = os.environ.get("SIESTA_TEST_STARTS")
    if starts:
        with open(starts, "a") as f:
            f.write(f"{os.getpid()} {time.time()}\n")
    time.sleep(DELAY)
    asyncio.run(main())
