"""An independent RFC 8441 client (WebSockets over HTTP/2) built on the Python `h2` library.

Usage: h2_websocket.py HOST PORT SCENARIO [--tls CA_FILE]

Scenarios (each prints one JSON object on stdout, then exits):
  multiplex  two WebSockets and a GET on one HTTP/2 connection: handshake answers, echo on both,
             ping/pong, a close handshake on the first while the second keeps working.
  drain      one WebSocket; prints {"ready": true} once it echoes, then waits for the server's
             close frame and the connection's GOAWAY, and prints what came.
  refused    extended CONNECT without SETTINGS_ENABLE_CONNECT_PROTOCOL being required: reports
             the setting and what the server did with the request.
  version    an extended CONNECT with Sec-WebSocket-Version 8: reports the status.
  rapid_reset  100 requests opened and reset at once (CVE-2023-44487): reports the GOAWAY.
  big_headers  a request whose header list is over the server's limit: reports the status.
  concurrent   opens one stream more than the server allows (raw frames): reports the resets.
  paced_reset  requests reset one at a time, each after the server took it (a PING answered in
               between): reports how many went before the GOAWAY and its code.
  continuation_flood  HEADERS without END_HEADERS, then CONTINUATION frames without end:
               reports whether the server closed the connection and how.
  idle         a GET, then a WebSocket kept busy for 3 s, then closed: reports whether a GOAWAY
               came while the session lived and how long after its end one came (the listener
               is configured with http2_idle_timeout = "1s").
  many_gets    500 GETs one after the other on one connection: reports their statuses.
  ping_flood   PINGs written without reading the answers until the server stops reading:
               reports how many were written.

Every socket read has a timeout, so a hang becomes an error instead of a stuck test.
"""

import json
import os
import socket
import ssl
import struct
import sys

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

TIMEOUT = 10.0


def ws_frame(opcode, payload=b"", fin=True):
    """A masked client frame (RFC 6455 §5.2)."""
    head = bytearray([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head.append(0x80 | n)
    elif n < 65536:
        head.append(0x80 | 126)
        head += struct.pack("!H", n)
    else:
        head.append(0x80 | 127)
        head += struct.pack("!Q", n)
    mask = os.urandom(4)
    head += mask
    return bytes(head) + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def first_frame(buf):
    """The first complete unmasked server frame in buf: (opcode, payload, length) or None."""
    if len(buf) < 2:
        return None
    opcode = buf[0] & 0x0F
    n = buf[1] & 0x7F
    i = 2
    if n == 126:
        if len(buf) < 4:
            return None
        n = struct.unpack("!H", bytes(buf[2:4]))[0]
        i = 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n = struct.unpack("!Q", bytes(buf[2:10]))[0]
        i = 10
    if len(buf) < i + n:
        return None
    return opcode, bytes(buf[i : i + n]), i + n


class Client:
    def __init__(self, host, port, ca=None):
        raw = socket.create_connection((host, port), timeout=TIMEOUT)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ca:
            ctx = ssl.create_default_context(cafile=ca)
            ctx.set_alpn_protocols(["h2"])
            raw = ctx.wrap_socket(raw, server_hostname="localhost")
            assert raw.selected_alpn_protocol() == "h2", raw.selected_alpn_protocol()
        self.sock = raw
        self.authority = f"{host}:{port}"
        self.scheme = "https" if ca else "http"
        self.conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.conn.initiate_connection()
        self.flush()
        self.remote_settings = None
        self.headers = {}
        self.data = {}
        self.ended = set()
        self.reset = {}
        self.goaway = None
        self.closed = False
        self.inbuf = bytearray()
        self.raw = False
        while self.remote_settings is None:
            self.pump()

    def flush(self):
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)

    def pump(self):
        """Reads once and handles every complete frame; raises on a timeout.

        Frames are handed to the h2 state machine one by one, so that when it gives up after a
        GOAWAY (it treats the connection as closed, while RFC 9113 §6.8 lets the streams below
        the GOAWAY's last stream id finish) the frames that follow are still read, by hand.
        """
        chunk = self.sock.recv(65536)
        if not chunk:
            self.closed = True
            raise EOFError("connection closed")
        self.inbuf += chunk
        while len(self.inbuf) >= 9:
            length = int.from_bytes(self.inbuf[0:3], "big")
            if len(self.inbuf) < 9 + length:
                break
            frame = bytes(self.inbuf[: 9 + length])
            del self.inbuf[: 9 + length]
            if not self.raw:
                try:
                    self.handle(self.conn.receive_data(frame))
                    continue
                except h2.exceptions.ProtocolError:
                    if self.goaway is None:
                        raise
                    self.raw = True
            self.handle_raw(frame)
        if not self.raw:
            self.flush()

    def handle(self, events):
        for event in events:
            if isinstance(event, h2.events.RemoteSettingsChanged):
                self.remote_settings = {
                    int(k): v.new_value for k, v in event.changed_settings.items()
                }
            elif isinstance(event, h2.events.ResponseReceived):
                self.headers[event.stream_id] = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                self.data.setdefault(event.stream_id, bytearray()).extend(event.data)
                self.conn.acknowledge_received_data(
                    event.flow_controlled_length, event.stream_id
                )
            elif isinstance(event, h2.events.StreamEnded):
                self.ended.add(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self.reset[event.stream_id] = int(event.error_code)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = int(event.error_code)

    def handle_raw(self, frame):
        """DATA, RST_STREAM and GOAWAY read by hand after the state machine stopped."""
        kind, flags = frame[3], frame[4]
        sid = int.from_bytes(frame[5:9], "big") & 0x7FFFFFFF
        payload = frame[9:]
        if kind == 0x0:
            if flags & 0x8:
                pad = payload[0]
                payload = payload[1 : len(payload) - pad]
            self.data.setdefault(sid, bytearray()).extend(payload)
            if flags & 0x1:
                self.ended.add(sid)
        elif kind == 0x3:
            self.reset[sid] = int.from_bytes(payload[:4], "big")
        elif kind == 0x7:
            self.goaway = int.from_bytes(payload[4:8], "big")

    def send_raw(self, frame):
        self.sock.sendall(frame)

    def wait(self, what, done):
        while not done():
            self.pump()
        return what

    def websocket(self, path, extra=(), version="13"):
        sid = self.conn.get_next_available_stream_id()
        headers = [
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":scheme", self.scheme),
            (":path", path),
            (":authority", self.authority),
            ("sec-websocket-version", version),
        ] + list(extra)
        self.conn.send_headers(sid, headers)
        self.flush()
        self.wait("answer", lambda: sid in self.headers or sid in self.reset)
        return sid

    def get(self, path):
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            sid,
            [
                (":method", "GET"),
                (":scheme", self.scheme),
                (":path", path),
                (":authority", self.authority),
            ],
            end_stream=True,
        )
        self.flush()
        self.wait("response", lambda: sid in self.ended or sid in self.reset)
        return sid

    def send(self, sid, frame):
        """Sends frame as DATA, within the frame size and the flow-control windows."""
        if self.raw:
            head = len(frame).to_bytes(3, "big") + bytes([0x0, 0x0]) + sid.to_bytes(4, "big")
            self.send_raw(head + frame)
            return
        while frame:
            window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if window == 0:
                self.pump()
                continue
            self.conn.send_data(sid, frame[:window])
            frame = frame[window:]
            self.flush()

    def next_frame(self, sid):
        """The next complete WebSocket frame on stream sid, or None once the stream ended."""
        while True:
            buf = self.data.setdefault(sid, bytearray())
            frame = first_frame(buf)
            if frame is not None:
                opcode, payload, length = frame
                del buf[:length]
                return opcode, payload
            if sid in self.ended or sid in self.reset:
                return None
            self.pump()


def close_code(payload):
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


def multiplex(c):
    out = {"enable_connect_protocol": c.remote_settings.get(0x8)}
    a = c.websocket("/ws", [("sec-websocket-protocol", "chat")])
    b = c.websocket("/ws")
    out["status_a"] = c.headers[a].get(":status")
    out["status_b"] = c.headers[b].get(":status")
    out["subprotocol_a"] = c.headers[a].get("sec-websocket-protocol")
    out["accept_header_a"] = "sec-websocket-accept" in c.headers[a]
    g = c.get("/plain")
    out["get_status"] = c.headers.get(g, {}).get(":status")
    c.send(a, ws_frame(0x1, b"hello from a"))
    c.send(b, ws_frame(0x2, bytes(range(256)) * 300))
    out["echo_a"] = c.next_frame(a)[1].decode()
    op, payload = c.next_frame(b)
    out["echo_b_ok"] = op == 0x2 and payload == bytes(range(256)) * 300
    c.send(a, ws_frame(0x9, b"are you there"))
    op, payload = c.next_frame(a)
    out["pong_a"] = [op, payload.decode()]
    c.send(a, ws_frame(0x8, struct.pack("!H", 1000) + b"bye"))
    op, payload = c.next_frame(a)
    out["close_a"] = [op, close_code(payload), payload[2:].decode()]
    # Tether ends the stream once both close frames went by (END_STREAM, or a reset if the
    # client had not ended its side yet); end ours if it is still open.
    try:
        c.conn.end_stream(a)
        c.flush()
    except h2.exceptions.StreamClosedError:
        pass
    c.wait("end of a", lambda: a in c.ended or a in c.reset)
    c.send(b, ws_frame(0x1, b"b still here"))
    out["echo_b_after_a_closed"] = c.next_frame(b)[1].decode()
    return out


def drain(c):
    a = c.websocket("/ws")
    c.send(a, ws_frame(0x1, b"ready?"))
    c.next_frame(a)
    print(json.dumps({"ready": True, "status": c.headers[a].get(":status")}), flush=True)
    c.sock.settimeout(30)
    frame = c.next_frame(a)
    out = {"close": None, "goaway": None}
    if frame is not None and frame[0] == 0x8:
        out["close"] = [close_code(frame[1]), frame[1][2:].decode()]
        c.send(a, ws_frame(0x8, frame[1][:2]))
    try:
        c.wait("goaway", lambda: c.goaway is not None)
    except (EOFError, OSError, h2.exceptions.ProtocolError):
        pass
    out["goaway"] = c.goaway
    return out


def refused(c):
    out = {"enable_connect_protocol": c.remote_settings.get(0x8)}
    sid = c.conn.get_next_available_stream_id()
    try:
        c.websocket("/ws")
        out["status"] = c.headers.get(sid, {}).get(":status")
        out["reset"] = c.reset.get(sid)
    except Exception as e:  # the library itself refuses: that is what a browser does too
        out["client_refused"] = type(e).__name__
    return out


def version(c):
    a = c.websocket("/ws", version="8")
    c.wait("end", lambda: a in c.ended or a in c.reset)
    return {
        "status": c.headers.get(a, {}).get(":status"),
        "version_header": c.headers.get(a, {}).get("sec-websocket-version"),
    }


def rapid_reset(c):
    for _ in range(100):
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(
            sid,
            [(":method", "GET"), (":scheme", c.scheme), (":path", "/plain"), (":authority", c.authority)],
            end_stream=True,
        )
        c.conn.reset_stream(sid)
    c.flush()
    try:
        c.wait("goaway", lambda: c.goaway is not None)
    except (EOFError, OSError):
        pass
    return {"goaway": c.goaway}


def big_headers(c):
    sid = c.conn.get_next_available_stream_id()
    c.conn.send_headers(
        sid,
        [
            (":method", "GET"),
            (":scheme", c.scheme),
            (":path", "/plain"),
            (":authority", c.authority),
            ("x-big", "a" * 40000),
        ],
        end_stream=True,
    )
    c.flush()
    c.wait("answer", lambda: sid in c.ended or sid in c.reset)
    # The connection still serves the next request.
    g = c.get("/plain")
    return {
        "status": c.headers.get(sid, {}).get(":status"),
        "reset": c.reset.get(sid),
        "next_status": c.headers.get(g, {}).get(":status"),
    }


def raw_frame(kind, flags, sid, payload):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + sid.to_bytes(4, "big") + payload


def get_block(c, path="/plain"):
    import hpack

    return hpack.Encoder().encode(
        [(":method", "GET"), (":scheme", c.scheme), (":path", path), (":authority", c.authority)]
    )


def concurrent(c):
    limit = c.remote_settings.get(0x3)
    block = get_block(c)
    sids = [1 + 2 * i for i in range(limit + 1)]
    # HEADERS with END_STREAM|END_HEADERS, each block encoded alone (a fresh encoder each time).
    c.send_raw(b"".join(raw_frame(0x1, 0x5, sid, block) for sid in sids))
    c.raw = True
    try:
        c.wait("a reset", lambda: len(c.reset) > 0)
    except (EOFError, OSError):
        pass
    return {"limit": limit, "reset": {str(k): v for k, v in c.reset.items()}}


def paced_reset(c):
    block = get_block(c)
    c.raw = True
    sent = 0
    for i in range(1000):
        sid = 1 + 2 * i
        ping = os.urandom(8)
        c.send_raw(raw_frame(0x1, 0x5, sid, block) + raw_frame(0x6, 0x0, 0, ping))
        # The PING's answer means the server read the HEADERS before it.
        acked = [False]
        original = c.handle_raw

        def watch(frame, acked=acked, original=original):
            if frame[3] == 0x6 and frame[4] & 0x1 and frame[9:17] == ping:
                acked[0] = True
            original(frame)

        c.handle_raw = watch
        try:
            c.wait("ping ack", lambda: acked[0] or c.goaway is not None)
        except (EOFError, OSError):
            break
        finally:
            c.handle_raw = original
        if c.goaway is not None:
            break
        c.send_raw(raw_frame(0x3, 0x0, sid, (0x8).to_bytes(4, "big")))  # RST_STREAM CANCEL
        sent += 1
    return {"reset_before_goaway": sent, "goaway": c.goaway}


def continuation_flood(c):
    import hpack

    c.raw = True
    enc = hpack.Encoder()
    block = enc.encode([(":method", "GET"), (":scheme", c.scheme), (":path", "/plain"), (":authority", c.authority)])
    c.send_raw(raw_frame(0x1, 0x1, 1, block))  # END_STREAM, no END_HEADERS
    fragment = enc.encode([("x-flood", "a" * 100)])
    written = 0
    c.sock.settimeout(2)
    try:
        for _ in range(100_000):
            c.send_raw(raw_frame(0x9, 0x0, 1, fragment))
            written += 1
    except OSError:
        pass
    c.sock.settimeout(TIMEOUT)
    try:
        c.wait("goaway", lambda: c.goaway is not None)
    except (EOFError, OSError):
        pass
    return {"written": written, "goaway": c.goaway, "closed": c.closed}


def ping_flood(c):
    c.raw = True
    c.sock.settimeout(2)
    written = 0
    batch = raw_frame(0x6, 0x0, 0, b"12345678") * 1000
    try:
        for _ in range(2_000):
            c.send_raw(batch)
            written += 1000
    except OSError:
        pass
    return {"written": written}


def many_gets(c):
    statuses = {}
    for _ in range(500):
        sid = c.get("/plain")
        status = c.headers.get(sid, {}).get(":status")
        statuses[status] = statuses.get(status, 0) + 1
    return {"statuses": statuses, "goaway": c.goaway}


def idle(c):
    import time

    g = c.get("/plain")
    out = {"get_status": c.headers.get(g, {}).get(":status")}
    a = c.websocket("/ws")
    start = time.monotonic()
    while time.monotonic() - start < 3.0:
        c.send(a, ws_frame(0x1, b"still here"))
        c.next_frame(a)
        time.sleep(0.25)  # the client's own pace: three idle timeouts pass while it talks
    out["goaway_during_session"] = c.goaway
    c.send(a, ws_frame(0x8, struct.pack("!H", 1000)))
    c.next_frame(a)
    try:
        c.conn.end_stream(a)
        c.flush()
    except h2.exceptions.StreamClosedError:
        pass
    closed = time.monotonic()
    try:
        c.wait("goaway", lambda: c.goaway is not None)
    except (EOFError, OSError, h2.exceptions.ProtocolError):
        pass
    out["goaway_after"] = c.goaway
    out["seconds_after_close"] = round(time.monotonic() - closed, 2)
    return out


def main():
    host, port, scenario = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    ca = sys.argv[5] if len(sys.argv) > 5 and sys.argv[4] == "--tls" else None
    c = Client(host, port, ca)
    scenarios = {
        "multiplex": multiplex,
        "drain": drain,
        "refused": refused,
        "version": version,
        "rapid_reset": rapid_reset,
        "big_headers": big_headers,
        "concurrent": concurrent,
        "paced_reset": paced_reset,
        "continuation_flood": continuation_flood,
        "ping_flood": ping_flood,
        "many_gets": many_gets,
        "idle": idle,
    }
    out = scenarios[scenario](c)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
