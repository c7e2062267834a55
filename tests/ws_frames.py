"""WebSocket frames (RFC 6455) written by hand for the fake ComfyUI of tests/test_api_client.py, independently of
the websocket-client library the client uses, so that the client meets an independent peer."""
from __future__ import annotations


def server_frame(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0, mask: bytes | None = None):
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n <= 125:
        head = bytes([b0, mbit | n])
    elif n <= 0xFFFF:
        head = bytes([b0, mbit | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([b0, mbit | 127]) + n.to_bytes(8, "big")
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return head + mask + payload
    return head + payload


def read_client_frame(buf: bytearray):
    """(fin, opcode, masked, payload) of a client frame at the start of buf (consumed), or None."""
    if len(buf) < 2:
        return None
    n, pos = buf[1] & 0x7F, 2
    if n == 126:
        if len(buf) < 4:
            return None
        n, pos = int.from_bytes(buf[2:4], "big"), 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n, pos = int.from_bytes(buf[2:10], "big"), 10
    masked = bool(buf[1] & 0x80)
    key = bytes(buf[pos:pos + 4]) if masked else b"\0\0\0\0"
    pos += 4 if masked else 0
    if len(buf) < pos + n:
        return None
    payload = bytes(b ^ key[i % 4] for i, b in enumerate(buf[pos:pos + n]))
    fin, op = bool(buf[0] & 0x80), buf[0] & 0x0F
    del buf[:pos + n]
    return fin, op, masked, payload
