"""A minimal RFC 6455 websocket client over ``socket`` (standard library only).

Just enough for a ComfyUI client: the opening handshake (with the ``Sec-WebSocket-Accept`` check),
masked client frames, text / binary messages, fragmented messages, frames of any size (7-, 16- and
64-bit lengths), automatic answers to ping, and the closing handshake. No extensions (compression)
and no subprotocols are negotiated, so a frame with an RSV bit set is a protocol error.

    ws = WebSocket.connect("ws://127.0.0.1:8188/ws?clientId=abc", timeout=10)
    msg = ws.recv(timeout=5)      # str (text message) or bytes (binary message)
    ws.close()

``recv`` is restartable: a ``socket.timeout`` leaves the stream intact (incomplete frames stay
buffered), so a caller may poll with short timeouts.
"""
from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
import struct
import urllib.parse

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_DATA_OPS = (OP_CONT, OP_TEXT, OP_BINARY)
_CONTROL_OPS = (OP_CLOSE, OP_PING, OP_PONG)

DEFAULT_MAX_MESSAGE = 256 * 1024 * 1024  # a preview image is a few MB; refuse absurd sizes


class WebSocketError(Exception):
    """Handshake or protocol failure."""


class HandshakeError(WebSocketError):
    """The server did not accept the upgrade. ``status`` is the HTTP status (None if unparsable)."""

    def __init__(self, message, status=None, body=b""):
        super().__init__(message)
        self.status = status
        self.body = body


class WebSocketClosed(WebSocketError):
    """The connection is closed (close frame received, or the peer went away)."""

    def __init__(self, code=None, reason=""):
        super().__init__(f"websocket closed (code {code}{', ' + reason if reason else ''})"
                         if code is not None else "websocket connection lost")
        self.code = code
        self.reason = reason


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` value a server must answer to ``Sec-WebSocket-Key: key``."""
    return base64.b64encode(hashlib.sha1((key + GUID).encode("ascii")).digest()).decode("ascii")


def _mask(payload: bytes, key: bytes) -> bytes:
    if not payload:
        return b""
    # XOR with the repeated 4-byte key, done as one big-integer operation (fast for large frames).
    n = len(payload)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def encode_frame(opcode: int, payload: bytes = b"", fin: bool = True, mask: bool = True,
                 mask_key: bytes | None = None) -> bytes:
    """One frame. Clients mask (``mask=True``); servers do not (used by the tests' fake server)."""
    b0 = (0x80 if fin else 0) | (opcode & 0x0F)
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if mask:
        key = mask_key if mask_key is not None else os.urandom(4)
        return head + key + _mask(payload, key)
    return head + payload


def parse_frame(buf, allow_masked: bool = True):
    """Parse one frame at the start of ``buf``. Returns ``(fin, rsv, opcode, payload, size)`` or None when
    ``buf`` does not hold a whole frame yet (``size`` = bytes the frame occupies)."""
    if len(buf) < 2:
        return None
    b0, b1 = buf[0], buf[1]
    n = b1 & 0x7F
    pos = 2
    if n == 126:
        if len(buf) < 4:
            return None
        n = struct.unpack_from("!H", buf, 2)[0]
        pos = 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n = struct.unpack_from("!Q", buf, 2)[0]
        if n >> 63:
            raise WebSocketError("frame length has the most significant bit set")
        pos = 10
    masked = bool(b1 & 0x80)
    if masked:
        if not allow_masked:
            raise WebSocketError("the server sent a masked frame")
        if len(buf) < pos + 4:
            return None
        key = bytes(buf[pos:pos + 4])
        pos += 4
    if len(buf) < pos + n:
        return None
    payload = bytes(buf[pos:pos + n])
    if masked:
        payload = _mask(payload, key)
    return bool(b0 & 0x80), (b0 >> 4) & 0x7, b0 & 0x0F, payload, pos + n


def _frame_length(buf):
    """Total size of the frame starting ``buf`` once its header is complete, else None."""
    if len(buf) < 2:
        return None
    n = buf[1] & 0x7F
    pos = 2
    if n == 126:
        if len(buf) < 4:
            return None
        n, pos = struct.unpack_from("!H", buf, 2)[0], 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n, pos = struct.unpack_from("!Q", buf, 2)[0], 10
    if buf[1] & 0x80:
        pos += 4
    return pos + n


class WebSocket:
    """A connected client websocket. Build with :meth:`connect`, or wrap a socket on which the
    handshake is already done (``leftover``: bytes read past the handshake)."""

    def __init__(self, sock: socket.socket, leftover: bytes = b"", max_message: int = DEFAULT_MAX_MESSAGE):
        self.sock = sock
        self._buf = bytearray(leftover)
        self._frag_op = None
        self._frag_parts: list[bytes] = []
        self._frag_size = 0
        self.max_message = max_message
        self.closed = False
        self.close_code = None
        self.close_reason = ""

    # ------------------------------------------------------------ handshake
    @classmethod
    def connect(cls, url: str, timeout: float = 10.0, headers: dict | None = None,
                ssl_context: ssl.SSLContext | None = None, max_message: int = DEFAULT_MAX_MESSAGE) -> "WebSocket":
        """Open ``ws://`` or ``wss://`` ``url``. ``socket.timeout`` / ``OSError`` from the TCP connect
        propagate unchanged (the caller tells "unreachable" apart); a refused upgrade raises HandshakeError."""
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("ws", "wss"):
            raise ValueError(f"not a websocket URL: {url}")
        host = u.hostname or "127.0.0.1"
        port = u.port or (443 if u.scheme == "wss" else 80)
        path = (u.path or "/") + ("?" + u.query if u.query else "")
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            if u.scheme == "wss":
                ctx = ssl_context or ssl.create_default_context()
                sock = ctx.wrap_socket(sock, server_hostname=host)
            key = base64.b64encode(os.urandom(16)).decode("ascii")
            host_header = f"[{host}]" if ":" in host else host
            if u.port:
                host_header += f":{u.port}"
            lines = [f"GET {path} HTTP/1.1", f"Host: {host_header}", "Upgrade: websocket",
                     "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
            for k, v in (headers or {}).items():
                lines.append(f"{k}: {v}")
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            head, leftover = cls._read_http_head(sock)
            status, fields = cls._parse_http_head(head)
            if status != 101:
                raise HandshakeError(f"the server answered HTTP {status} instead of switching to the "
                                     f"websocket protocol", status, leftover)
            if fields.get("upgrade", "").lower() != "websocket" or \
                    "upgrade" not in [t.strip() for t in fields.get("connection", "").lower().split(",")]:
                raise HandshakeError("the server's 101 answer lacks 'Upgrade: websocket' / 'Connection: Upgrade'",
                                     status)
            if fields.get("sec-websocket-accept", "") != accept_key(key):
                raise HandshakeError("the server's Sec-WebSocket-Accept does not match the key sent", status)
            if fields.get("sec-websocket-extensions"):
                raise HandshakeError(f"the server enabled an extension that was not asked for: "
                                     f"{fields['sec-websocket-extensions']}", status)
        except BaseException:
            sock.close()
            raise
        return cls(sock, leftover, max_message=max_message)

    @staticmethod
    def _read_http_head(sock, limit=65536):
        data = bytearray()
        while True:
            i = data.find(b"\r\n\r\n")
            if i >= 0:
                return bytes(data[:i]), bytes(data[i + 4:])
            if len(data) > limit:
                raise HandshakeError("the server's handshake answer is too long")
            chunk = sock.recv(4096)
            if not chunk:
                raise HandshakeError("the server closed the connection during the websocket handshake")
            data += chunk

    @staticmethod
    def _parse_http_head(head: bytes):
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise HandshakeError(f"not an HTTP answer to the websocket handshake: {lines[0][:80]!r}")
        fields = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                k = k.strip().lower()
                fields[k] = (fields[k] + ", " + v.strip()) if k in fields else v.strip()
        return int(parts[1]), fields

    # --------------------------------------------------------------- frames
    def settimeout(self, timeout):
        self.sock.settimeout(timeout)

    def _send_frame(self, opcode, payload=b"", fin=True):
        self.sock.sendall(encode_frame(opcode, payload, fin=fin, mask=True))

    def send_text(self, text: str):
        self._send_frame(OP_TEXT, text.encode("utf-8"))

    def send_binary(self, data: bytes):
        self._send_frame(OP_BINARY, bytes(data))

    def ping(self, payload: bytes = b""):
        self._send_frame(OP_PING, payload)

    def _fail(self, message, code=1002):
        try:
            self._send_frame(OP_CLOSE, struct.pack("!H", code))
        except OSError:
            pass
        self._shutdown()
        raise WebSocketError(message)

    def _read_frame(self):
        """The next whole frame: (fin, rsv, opcode, payload). A timeout leaves partial data buffered."""
        while True:
            total = _frame_length(self._buf)
            if total is not None:
                if total - 14 > self.max_message:
                    self._fail(f"frame of {total} bytes exceeds the limit of {self.max_message}", 1009)
                if len(self._buf) >= total:
                    try:
                        fin, rsv, op, payload, size = parse_frame(self._buf, allow_masked=False)
                    except WebSocketError as e:
                        self._fail(str(e))
                    del self._buf[:size]
                    return fin, rsv, op, payload
            want = 65536 if total is None else max(65536, total - len(self._buf))
            chunk = self.sock.recv(min(want, 4 << 20))
            if not chunk:
                self._shutdown()
                raise WebSocketClosed(None)
            self._buf += chunk

    def recv(self, timeout: float | None = ...):
        """The next message: ``str`` (text) or ``bytes`` (binary). Pings are answered, pongs skipped.
        Raises WebSocketClosed after a close frame (answered), ``socket.timeout`` on timeout."""
        if self.closed:
            raise WebSocketClosed(self.close_code, self.close_reason)
        if timeout is not ...:
            self.sock.settimeout(timeout)
        while True:
            try:
                fin, rsv, op, payload = self._read_frame()
            except (ConnectionError, ssl.SSLError) as e:
                self._shutdown()
                raise WebSocketClosed(None, str(e)) from None
            if rsv:
                self._fail("frame with a reserved bit set (no extension was negotiated)")
            if op in _CONTROL_OPS:
                if not fin or len(payload) > 125:
                    self._fail("fragmented or oversized control frame")
                if op == OP_PING:
                    self._send_frame(OP_PONG, payload)
                elif op == OP_CLOSE:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                    reason = payload[2:].decode("utf-8", "replace")
                    try:
                        self._send_frame(OP_CLOSE, payload[:2])
                    except OSError:
                        pass
                    self.close_code, self.close_reason = code, reason
                    self._shutdown()
                    raise WebSocketClosed(code, reason)
                continue  # pong
            if op not in _DATA_OPS:
                self._fail(f"unknown opcode {op:#x}")
            if op == OP_CONT:
                if self._frag_op is None:
                    self._fail("continuation frame without a message to continue")
            else:
                if self._frag_op is not None:
                    self._fail("new data frame while a fragmented message is incomplete")
                self._frag_op = op
                self._frag_parts, self._frag_size = [], 0
            self._frag_parts.append(payload)
            self._frag_size += len(payload)
            if self._frag_size > self.max_message:
                self._fail(f"message exceeds the limit of {self.max_message} bytes", 1009)
            if not fin:
                continue
            data = b"".join(self._frag_parts)
            kind = self._frag_op
            self._frag_op, self._frag_parts, self._frag_size = None, [], 0
            if kind == OP_TEXT:
                try:
                    return data.decode("utf-8")
                except UnicodeDecodeError:
                    self._fail("text message is not valid UTF-8", 1007)
            return data

    # ---------------------------------------------------------------- close
    def _shutdown(self):
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass

    def close(self, code: int = 1000, reason: str = "", timeout: float = 1.0):
        """Send a close frame, wait briefly for the server's, then close the socket."""
        if self.closed:
            return
        try:
            self._send_frame(OP_CLOSE, struct.pack("!H", code) + reason.encode("utf-8")[:123])
            self.sock.settimeout(timeout)
            for _ in range(64):  # skip what is still in flight until the server's close frame
                fin, rsv, op, payload = self._read_frame()
                if op == OP_CLOSE:
                    break
        except (OSError, WebSocketError):
            pass
        self._shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
