"""A grpcio server for the integration tests: raw-bytes methods (identity serializers, no
generated code) and the standard health service.

Methods of service `test.Echo`:
  Unary  echoes the request message.
  Bidi   echoes each message of the request stream as it arrives.
  Fail   aborts with INVALID_ARGUMENT and the message "bad input: <request as text>".
  Slow   waits until the call is cancelled or its deadline passes (at most 30 s), then echoes.

Prints "PORT <n>" once serving on 127.0.0.1. Reads commands on stdin, one a line, and answers
"OK" to each: "NOT_SERVING" / "SERVING" set the overall health. Stops when stdin closes.
"""
import sys
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def unary(request, context):
    return request


def bidi(requests, context):
    for message in requests:
        yield message


def fail(request, context):
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad input: " + request.decode("utf-8", "replace"))


def slow(request, context):
    done = threading.Event()
    context.add_callback(done.set)
    done.wait(timeout=30)
    return request


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command in ("SERVING", "NOT_SERVING"):
            health_servicer.set("", getattr(health_pb2.HealthCheckResponse, command))
        print("OK", flush=True)
    server.stop(grace=None)


if __name__ == "__main__":
    main()
