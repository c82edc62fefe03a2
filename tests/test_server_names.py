"""Server names from opening payloads: TLS ClientHello server_name and HTTP Host, every read bounds-checked."""

import struct

import numpy as np
import pytest
from packetgen import batch, ethernet, ipv4, ipv6, tcp, udp

from pktnin.kernels.cpu import transform
from pktnin.layout import BODY_LEN
from pktnin.server_names import flow_name_keys, http_host, name_key, payload_name, tls_server_name


def client_hello(name: str | None, session_id: bytes = b"\x11" * 32, before: int = 2, padding: int = 0) -> bytes:
    """A TLS 1.2 record holding a ClientHello: a session id, three cipher suites, `before` other extensions and a
    padding extension of `padding` zero bytes, then the server_name extension (when a name is given), then one
    more."""

    def ext(kind: int, data: bytes) -> bytes:
        return struct.pack("!HH", kind, len(data)) + data

    exts = b"".join(ext(0x000A + i, bytes(range(i + 3))) for i in range(before))
    exts += ext(0x0015, bytes(padding)) if padding else b""
    if name is not None:
        host = name.encode()
        entry = b"\x00" + struct.pack("!H", len(host)) + host
        exts += ext(0x0000, struct.pack("!H", len(entry)) + entry)
    exts += ext(0x002B, b"\x02\x03\x04")
    body = b"\x03\x03" + bytes(range(32)) + bytes([len(session_id)]) + session_id
    body += struct.pack("!H", 6) + b"\x13\x01\x13\x02\xc0\x2f" + b"\x01\x00" + struct.pack("!H", len(exts)) + exts
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def test_tls_server_name():
    assert tls_server_name(client_hello("www.Example.co.uk")) == "www.Example.co.uk"
    assert tls_server_name(client_hello("a.b", session_id=b"", before=0)) == "a.b"
    assert tls_server_name(client_hello(None)) is None
    assert tls_server_name(b"\x17\x03\x03" + client_hello("x.com")[3:]) is None  # application data, not a hello
    server_hello = bytearray(client_hello("x.com"))
    server_hello[5] = 0x02
    assert tls_server_name(bytes(server_hello)) is None


def test_every_truncation_gives_the_name_or_none():
    whole = client_hello("video.example.net")
    end = whole.index(b"video.example.net") + len("video.example.net")
    for cut in range(len(whole)):
        got = tls_server_name(whole[:cut])
        assert got == ("video.example.net" if cut >= end else None), cut


def test_random_and_corrupted_payloads_do_not_raise():
    rng = np.random.default_rng(0)
    whole = client_hello("cdn.example.org")
    for _ in range(3000):
        mutated = bytearray(whole)
        for at in rng.integers(0, len(mutated), size=rng.integers(1, 6)):
            mutated[at] = rng.integers(0, 256)
        tls_server_name(bytes(mutated))
        payload_name(b"\x16\x03\x01" + rng.integers(0, 256, rng.integers(0, 300), dtype=np.uint8).tobytes())
        payload_name(b"GET /" + rng.integers(0, 256, rng.integers(0, 300), dtype=np.uint8).tobytes())


def test_http_host():
    assert http_host(b"GET /a HTTP/1.1\r\nUser-Agent: x\r\nHost: api.example.com:8080\r\n\r\n") == "api.example.com"
    assert http_host(b"POST / HTTP/1.1\r\nhost:Example.ORG\r\n\r\n") == "Example.ORG"
    assert http_host(b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n") == "[2001:db8::1]"
    assert http_host(b"HTTP/1.1 200 OK\r\nHost: a.com\r\n") is None  # a response
    assert http_host(b"GET / HTTP/1.1\r\nX-Host: a.com\r\n") is None


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("www.google.com", "google.com"),
        ("GOOGLE.com.", "google.com"),
        ("news.bbc.co.uk", "bbc.co.uk"),
        ("a.b.example.de", "example.de"),
        ("localhost", "localhost"),
        ("192.168.1.1", None),
        ("[2001:db8::1]", None),
        ("2001:db8::1", None),
        ("1.2.3", "2.3"),
        ("bad name.com", None),
        ("", None),
        (None, None),
    ],
)
def test_name_key(name, key):
    assert name_key(name) == key


def rows_of(packets: list[bytes]) -> np.ndarray:
    """Layout rows of Ethernet frames through the CPU kernel (the scorer's own transform)."""
    rows, meta = transform(batch([(p, 1) for p in packets]))
    assert len(rows) == len(packets)
    return rows


def test_flow_name_keys_read_the_first_name_in_row_order():
    rows = rows_of([
        ethernet(ipv4(tcp(40000, 443, b"\x16\x03\x01\x00\x05junk"))),  # a handshake record that is no hello
        ethernet(ipv4(tcp(40000, 443, client_hello("www.example.com")))),
        ethernet(ipv4(tcp(40000, 443, client_hello("other.org")))),
        ethernet(ipv6(tcp(5000, 80, b"GET / HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n"))),
        ethernet(ipv6(tcp(5000, 80, b"GET / HTTP/1.1\r\nHost: Shop.Example.co.uk\r\n\r\n"))),
        ethernet(ipv4(udp(40000, 443, b"\x16" + b"\xff" * 100))),
    ])  # fmt: skip
    flows = np.zeros((3, 3, rows.shape[1]), np.uint8)
    flows[0] = rows[:3]  # the hello is the second row; the third row's name is not read
    flows[1, :2] = rows[3:5]  # an address literal (no key), then a name
    flows[2, :1] = rows[5:]
    assert flow_name_keys(flows) == ["example.com", "example.co.uk", None]


@pytest.mark.parametrize("past", [False, True])
def test_a_name_past_the_rows_bytes_is_not_read(past):
    """The row keeps BODY_LEN payload bytes: a hello whose name ends beyond them gives no name (the zero padding
    after the payload is never read as a name's bytes); one that ends at the last byte the row keeps is read."""
    name = "far.example.com"
    unpadded = client_hello(name, before=0)
    end = unpadded.index(name.encode()) + len(name)
    hello = client_hello(name, before=0, padding=BODY_LEN - end - 4 + past)  # 4: the padding extension's header
    assert tls_server_name(hello) == name
    rows = rows_of([ethernet(ipv4(tcp(40000, 443, hello)))])
    assert flow_name_keys(rows[:, None, :]) == [None if past else "example.com"]
