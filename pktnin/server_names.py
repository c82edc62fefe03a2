"""Server names in a flow's opening payloads: the TLS ClientHello's server_name and the HTTP request's Host.

A DPI engine labels much traffic by the server's name; a flow model with a name table (pktnin.engine.name_table)
reads the name here, from the layout rows it already has, and keys its table by the name's registered domain.
Every read is checked against the payload bytes the row holds (a row keeps at most 1460 of them), so a truncated
or hostile payload gives no name, never an error. Plain Python: it runs once per flow, on at most K rows.
"""

from __future__ import annotations

import ipaddress
import re

import numpy as np

from pktnin.flow_features import payload_length
from pktnin.layout import BODY_LEN, HEADER_LEN

_TLS_HANDSHAKE, _CLIENT_HELLO, _SERVER_NAME_EXT, _HOST_NAME_TYPE = 0x16, 0x01, 0x0000, 0x00
_HTTP_METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"OPTIONS ", b"CONNECT ", b"DELETE ", b"PATCH ")
_HOST_LINE = re.compile(rb"\r\nhost:[ \t]*([^\r\n]{1,253})", re.IGNORECASE)
_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
# Second-level labels under which a country's registry sells names (bbc.co.uk: the domain is three labels).
_PUBLIC_SECOND_LEVEL = frozenset({"co", "com", "net", "org", "ac", "gov", "edu", "ne", "or", "go"})
_METHOD_FIRST_BYTES = np.array(sorted({m[0] for m in _HTTP_METHODS}), np.uint8)


def _u16(data: bytes, at: int) -> int:
    return data[at] << 8 | data[at + 1]


def tls_server_name(payload: bytes) -> str | None:
    """The host_name of a TLS ClientHello's server_name extension, if the payload starts with one it holds whole."""
    # record header (5) | handshake type (1) | length (3) | version (2) | random (32) = 43 bytes before session id
    if len(payload) < 44 or payload[0] != _TLS_HANDSHAKE or payload[5] != _CLIENT_HELLO:
        return None
    at = 43
    at += 1 + payload[at]  # session id
    if at + 2 > len(payload):
        return None
    at += 2 + _u16(payload, at)  # cipher suites
    if at + 1 > len(payload):
        return None
    at += 1 + payload[at]  # compression methods
    if at + 2 > len(payload):
        return None
    end = min(len(payload), at + 2 + _u16(payload, at))
    at += 2
    while at + 4 <= end:
        kind, size = _u16(payload, at), _u16(payload, at + 2)
        at += 4
        if kind == _SERVER_NAME_EXT:
            # server_name_list length (2) | name type (1) | name length (2) | name
            if at + 5 > end or payload[at + 2] != _HOST_NAME_TYPE:
                return None
            length = _u16(payload, at + 3)
            if at + 5 + length > end:
                return None
            return payload[at + 5 : at + 5 + length].decode("ascii", "replace")
        at += size
    return None


def http_host(payload: bytes) -> str | None:
    """The Host header of an HTTP/1 request that starts the payload, without a port."""
    if not payload.startswith(_HTTP_METHODS):
        return None
    match = _HOST_LINE.search(payload)
    if match is None:
        return None
    host = match.group(1).decode("ascii", "replace").strip()
    if host.startswith("[") and "]" in host:  # [IPv6 address]:port
        return host[: host.index("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def name_key(name: str | None) -> str | None:
    """The registered domain a name table is keyed by: the last two labels (three under a country's public
    second level such as co.uk), lower case; None for no name, an IP address literal or a name that is not one."""
    if not name:
        return None
    name = name.strip().rstrip(".").lower()
    if _is_address(name.removeprefix("[").removesuffix("]")) or not _NAME.fullmatch(name):
        return None
    labels = name.split(".")
    keep = 3 if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2] in _PUBLIC_SECOND_LEVEL else 2
    return ".".join(labels[-keep:])


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def payload_name(payload: bytes) -> str | None:
    return tls_server_name(payload) or http_host(payload)


def flow_name_keys(rows: np.ndarray) -> list[str | None]:
    """Per flow, the first name_key its rows uint8 [F, K, 1500] give, in row order (a name that gives no key, such
    as an address, is passed over), or None."""
    rows = np.asarray(rows, dtype=np.uint8)
    keys: list[str | None] = [None] * rows.shape[0]
    # Only payloads that can start a ClientHello or a request are read, in Python: few rows of a batch.
    first = rows[:, :, HEADER_LEN]
    candidate = (first == _TLS_HANDSHAKE) & (rows[:, :, HEADER_LEN + 5] == _CLIENT_HELLO) | np.isin(
        first, _METHOD_FIRST_BYTES
    )
    flows, slots = np.nonzero(candidate)
    if flows.size == 0:
        return keys
    lengths = np.minimum(payload_length(rows[flows, slots]), BODY_LEN)
    for f, j, length in zip(flows, slots, lengths):
        if keys[f] is None and length > 0:
            keys[f] = name_key(payload_name(rows[f, j, HEADER_LEN : HEADER_LEN + length].tobytes()))
    return keys
