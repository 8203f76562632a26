"""Echo load for one WebSocket, over HTTP/1.1 (`--http1`) or over HTTP/2 (RFC 8441, `--h2`), with
the same framing code on both, so the proxy's CPU per message can be compared between the two.

Usage: ws_echo_client.py --h2|--http1 HOST PORT MESSAGES SIZE WINDOW

Keeps WINDOW messages of SIZE bytes in flight until MESSAGES have been echoed, then prints
{"messages": N, "seconds": S}. Used by bench/h2.sh.
"""

import base64
import json
import os
import socket
import struct
import sys
import time

import h2.config
import h2.connection
import h2.events


def frame(payload):
    head = bytearray([0x82])
    n = len(payload)
    if n < 126:
        head.append(0x80 | n)
    else:
        head.append(0x80 | 126)
        head += struct.pack("!H", n)
    head += b"\0\0\0\0"  # a zero mask: the payload is sent as is
    return bytes(head) + payload


def frame_len(buf):
    if len(buf) < 2:
        return None
    n, i = buf[1] & 0x7F, 2
    if n == 126:
        if len(buf) < 4:
            return None
        n, i = struct.unpack("!H", bytes(buf[2:4]))[0], 4
    return i + n if len(buf) >= i + n else None


class Http1:
    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += self.sock.recv(4096)
        assert buf.startswith(b"HTTP/1.1 101"), buf[:40]
        self.pending = bytearray(buf.split(b"\r\n\r\n", 1)[1])

    def send(self, data):
        self.sock.sendall(data)

    def recv(self):
        data = bytes(self.pending) or self.sock.recv(262144)
        self.pending.clear()
        return data


class Http2:
    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 24})
        self.conn.increment_flow_control_window(1 << 24)
        self.sock.sendall(self.conn.data_to_send())
        self.sid = None
        self.inbox = bytearray()
        self.ready = False
        while not self.ready:
            self._pump(self.sock.recv(65536))
            if self.sid is None and self.conn.remote_settings.enable_connect_protocol:
                self.sid = self.conn.get_next_available_stream_id()
                self.conn.send_headers(
                    self.sid,
                    [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"),
                     (":path", "/ws"), (":authority", f"{host}:{port}"), ("sec-websocket-version", "13")],
                )
                self.sock.sendall(self.conn.data_to_send())

    def _pump(self, chunk):
        for event in self.conn.receive_data(chunk):
            if isinstance(event, h2.events.ResponseReceived):
                assert dict(event.headers)[b":status"] == b"200", event.headers
                self.ready = True
            elif isinstance(event, h2.events.DataReceived):
                self.inbox += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)

    def send(self, data):
        self.conn.send_data(self.sid, data)
        self.sock.sendall(self.conn.data_to_send())

    def recv(self):
        while not self.inbox:
            self._pump(self.sock.recv(262144))
        data = bytes(self.inbox)
        self.inbox.clear()
        return data


def main():
    mode, host, port, total, size, window = sys.argv[1:7]
    port, total, size, window = int(port), int(total), int(size), int(window)
    c = Http2(host, port) if mode == "--h2" else Http1(host, port)
    msg = frame(os.urandom(size))
    sent = received = 0
    buf = bytearray()
    start = time.monotonic()
    c.send(msg * min(window, total))
    sent = min(window, total)
    while received < total:
        buf += c.recv()
        done = 0
        while True:
            n = frame_len(buf)
            if n is None:
                break
            del buf[:n]
            done += 1
        received += done
        more = min(done, total - sent)
        if more:
            c.send(msg * more)
            sent += more
    print(json.dumps({"messages": received, "seconds": time.monotonic() - start}))


if __name__ == "__main__":
    main()
