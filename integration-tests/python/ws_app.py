"""The app container of the Kubernetes shutdown replay (sidecar/tests/kubernetes.rs): a WebSocket
echo server on 127.0.0.1 (any path upgrades; GET /hello answers 200 "hello" over plain HTTP),
written with the `websockets` library. It prints "listening PORT" once it accepts.

Like most apps, it does not drain on its own: SIGTERM ends the process at once (Python's default
action), cutting every connection, which is why the pod's preStop must hold the app until Tether
has drained."""

import asyncio
import sys
from http import HTTPStatus

from websockets.asyncio.server import serve


def plain_http(connection, request):
    if request.path == "/hello":
        return connection.respond(HTTPStatus.OK, "hello\n")
    return None  # everything else upgrades


async def echo(ws):
    async for message in ws:
        await ws.send(message)


async def main():
    async with serve(echo, "127.0.0.1", 0, process_request=plain_http) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"listening {port}", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
