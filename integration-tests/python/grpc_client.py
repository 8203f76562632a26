"""A grpcio client for the integration tests: calls the `test.Echo` service of
grpc_backend.py through Tether (h2c with prior knowledge on a plain listener) with raw-bytes
methods, and prints what it saw as one JSON object.

Usage: grpc_client.py HOST:PORT
"""
import json
import queue
import sys

import grpc


def main():
    target = sys.argv[1]
    out = {}
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        unary = channel.unary_unary("/test.Echo/Unary")
        out["unary"] = unary(b"hello", timeout=10).decode()

        # Bidirectional and interleaved: each message goes out only after the previous one's
        # echo came back, so nothing on the way may wait for the end of the request stream.
        bidi = channel.stream_stream("/test.Echo/Bidi")
        outgoing = queue.Queue()

        def requests():
            while True:
                message = outgoing.get()
                if message is None:
                    return
                yield message

        echoes = []
        outgoing.put(b"one")
        responses = bidi(requests(), timeout=10)
        for message in (b"two", b"three", None):
            echoes.append(next(responses).decode())
            outgoing.put(message)
        for rest in responses:
            echoes.append(rest.decode())
        out["bidi"] = echoes

        try:
            channel.unary_unary("/test.Echo/Fail")(b"x", timeout=10)
            out["fail"] = None
        except grpc.RpcError as e:
            out["fail"] = [e.code().name, e.details()]

        try:
            channel.unary_unary("/test.Echo/Slow")(b"z", timeout=0.3)
            out["deadline"] = None
        except grpc.RpcError as e:
            out["deadline"] = e.code().name
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
