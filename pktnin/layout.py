"""Packet layout v1: the single source of truth for how a captured packet becomes a 1500-byte row.

Row = network segment (20 bytes) | transport segment (20 bytes) | first 1460 payload bytes, zero-padded.
Bytes 0..39 feed the header branch (NIN1), bytes 40..1499 the body branch (NIN2).
The parse functions below are plain Python over scalars and uint8 arrays so that numba compiles the very
same logic for the CPU (njit) and for the GPU (cuda.jit device functions); see pktnin.kernels.
"""

import numpy

from pktnin.errors import OptionError

LAYOUT_VERSION = 1

NET_LEN = 20
TRANSPORT_LEN = 20
HEADER_LEN = NET_LEN + TRANSPORT_LEN  # 40
BODY_LEN = 1460
ROW_LEN = HEADER_LEN + BODY_LEN  # 1500

# Skip reasons: index 0 means the packet became a row.
KEPT = 0
SKIP_UNSUPPORTED_LINK = 1
SKIP_NON_IP = 2
SKIP_FRAGMENT = 3
SKIP_NON_TCP_UDP = 4
SKIP_MALFORMED = 5
SKIP_DNS = 6
SKIP_NO_PAYLOAD = 7
SKIP_TS_OVERFLOW = 8  # set by the capture reader: the record's time does not fit int64 ns since the epoch
SKIP_ZERO_LENGTH = 9  # set by the capture reader: a record with captured length 0 (legal, nothing to score)
SKIP_REASONS = (
    "kept",
    "unsupported-link",
    "non-ip",
    "fragment",
    "non-tcp-udp",
    "malformed",
    "dns",
    "no-payload",
    "ts-overflow",
    "zero-length",
)

# Masking profiles.
MASK_PAPER = 0
MASK_STRICT = 1
MASK_PROFILES = {"paper": MASK_PAPER, "strict": MASK_STRICT}


def mask_code(mask) -> int:
    """Masking profile as its integer code; accepts a code (0/1) or a name ("paper"/"strict")."""
    if isinstance(mask, str):
        if mask not in MASK_PROFILES:
            raise OptionError(f"unknown mask profile {mask!r}; expected one of {sorted(MASK_PROFILES)}")
        return MASK_PROFILES[mask]
    code = int(mask)
    if code not in MASK_PROFILES.values():
        raise OptionError(f"unknown mask profile code {mask!r}; expected one of {sorted(MASK_PROFILES.values())}")
    return code


# ---------------------------------------------------------------------------------------------------------
# Link types (pcap LINKTYPE_* values) and protocol numbers.
LINK_NULL = 0
LINK_ETHERNET = 1
LINK_RAW_12 = 12  # LINKTYPE_RAW as some BSDs write it
LINK_RAW_14 = 14
LINK_RAW = 101
LINK_LOOP = 108
LINK_SLL = 113
LINK_IPV4 = 228
LINK_IPV6 = 229
LINK_SLL2 = 276

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_VLAN = 0x8100
ETHERTYPE_QINQ = 0x88A8
ETHERTYPE_QINQ_OLD = 0x9100

ETH_HEADER_LEN = 14
VLAN_TAG_LEN = 4
SLL_HEADER_LEN = 16
SLL_PROTOCOL_AT = 14
SLL2_HEADER_LEN = 20
SLL2_PROTOCOL_AT = 0
NULL_HEADER_LEN = 4

# BSD address families (NULL / LOOP link types): 2 is AF_INET everywhere; AF_INET6 differs per OS.
AF_INET = 2
AF_INET6_LINUX = 10
AF_INET6_NETBSD = 24
AF_INET6_FREEBSD = 28
AF_INET6_DARWIN = 30

IPV4_MIN_HEADER = 20
IPV6_HEADER_LEN = 40
IPV6_MAX_EXT_HEADERS = 8
IPPROTO_HOPOPTS = 0
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_AH = 51
IPPROTO_DSTOPTS = 60
TCP_MIN_HEADER = 20
UDP_HEADER_LEN = 8
DNS_PORT = 53

# Packet descriptor: what parse_packet learns about one packet, as an int64 vector (offsets are into buf).
D_NET_OFF = 0  # start of the IP header
D_IP_VERSION = 1  # 4 or 6
D_TRANS_OFF = 2  # start of the TCP/UDP header
D_PROTO = 3  # 6 or 17
D_PAYLOAD_OFF = 4  # start of the transport payload
D_PAYLOAD_LEN = 5  # payload bytes that go into the row (at most BODY_LEN)
D_VLAN = 6  # outermost VLAN id, 0 if untagged
D_SRC_PORT = 7
D_DST_PORT = 8
D_IP_END = 9  # end of the IP packet: min(captured end, end given by the IP length field)
D_KEEP_ROW = 10  # 4 * IPv6 + 2 * UDP: this packet's HEADER_KEEP row under the paper profile (+ 1 for strict)
DESC_LEN = 11


# Which of the 40 header bytes of a row are copied from the packet (1) or written as zero (0), by IP version,
# transport and masking profile: the one statement of the header masking rules. Row bytes 0..19 come from the IP
# header, 20..39 from the transport header at the same offset. Row index: 4 * IPv6 + 2 * UDP + strict.
def _header_keep(ip_version: int, tcp: bool, strict: bool) -> list:
    keep = [0] * HEADER_LEN
    for j in range(12 if ip_version == 4 else 8):  # IPv4: up to the addresses; IPv6: the 8 fixed bytes
        keep[j] = 1
    for k in range(TCP_MIN_HEADER if tcp else UDP_HEADER_LEN):  # UDP: 8 header bytes, then 12 zero bytes
        keep[NET_LEN + k] = 1
    if strict:  # identification, TTL, checksum / hop limit; ports, seq, ack and checksums
        for j in (4, 5, 8, 10, 11) if ip_version == 4 else (7,):
            keep[j] = 0
        for k in tuple(range(12)) + (16, 17) if tcp else (0, 1, 2, 3, 6, 7):
            keep[NET_LEN + k] = 0
    return keep


HEADER_KEEP = numpy.array(
    [_header_keep(v, tcp, strict) for v in (4, 6) for tcp in (True, False) for strict in (False, True)],
    dtype=numpy.uint8,
)

# Header bytes that tell captures apart rather than applications: IPv4 identification, TTL and checksum, IPv6 hop
# limit, TCP sequence and acknowledgement numbers and checksum, UDP checksum (the strict profile's extra zeros,
# less the ports). Training can fill them with random bytes (pktnin.trainer.augment). Row index: 2 * IPv6 + UDP.
CAPTURE_FIELDS = numpy.array([HEADER_KEEP[2 * kind] & (1 - HEADER_KEEP[2 * kind + MASK_STRICT]) for kind in range(4)])
CAPTURE_FIELDS[:, NET_LEN : NET_LEN + 4] = 0
CAPTURE_FIELDS = CAPTURE_FIELDS.astype(numpy.uint8)
# Where a row keeps what picks its CAPTURE_FIELDS row (both mask profiles copy these bytes).
ROW_VERSION_BYTE = 0  # high nibble: 4 or 6
ROW_IPV4_PROTOCOL_BYTE = 9
ROW_IPV6_NEXT_HEADER_BYTE = 6  # the transport only when no extension header comes first

# FNV-1a 64-bit, for the bidirectional flow key.
FNV64_OFFSET = 0xCBF29CE484222325
FNV64_PRIME = 0x100000001B3
# Hashing a zero byte is a multiplication by the prime, so the 12 zero bytes that pad an IPv4 address in the
# flow key are one multiplication by the prime's 12th power (mod 2**64).
FNV64_PRIME_POW12 = pow(FNV64_PRIME, 12, 1 << 64)


# ---------------------------------------------------------------------------------------------------------
# Parse logic. Rules for everything below (numba compiles these functions for the CPU and as CUDA device
# functions): scalars and 1-D arrays only, no allocation, no exceptions, no calls to other Python functions,
# and every read of buf is checked against the captured end first (numba does not check bounds).


def parse_packet(buf, off, caplen, linktype, keep_dns, desc):
    """Parse the packet buf[off : off + caplen] captured with `linktype`; fill desc (int64[DESC_LEN]).

    Returns KEPT or the SKIP_* reason. desc is fully meaningful only for kept packets.
    Choices the paper leaves open: the IP version nibble must match what the link layer announced
    (else malformed); raw-IP link types with a nibble other than 4/6 are non-ip; a 9th IPv6 extension
    header is malformed; VLAN tags are only unwrapped on Ethernet.
    """
    for i in range(DESC_LEN):
        desc[i] = 0
    if off < 0 or caplen < 0 or off + caplen > buf.shape[0]:
        return SKIP_MALFORMED
    end = off + caplen

    # 1. Link layer -> start of the IP header and the IP version it announces.
    p = off
    version = 0
    vlan = 0
    ethertype = -1  # stays -1 for the link types that announce the IP version without an EtherType
    if linktype == LINK_ETHERNET:
        if p + ETH_HEADER_LEN > end:
            return SKIP_MALFORMED
        ethertype = (int(buf[p + 12]) << 8) | int(buf[p + 13])
        p += ETH_HEADER_LEN
        first_tag = True
        while ethertype == ETHERTYPE_VLAN or ethertype == ETHERTYPE_QINQ or ethertype == ETHERTYPE_QINQ_OLD:
            if p + VLAN_TAG_LEN > end:
                return SKIP_MALFORMED
            if first_tag:
                vlan = ((int(buf[p]) << 8) | int(buf[p + 1])) & 0x0FFF
                first_tag = False
            ethertype = (int(buf[p + 2]) << 8) | int(buf[p + 3])
            p += VLAN_TAG_LEN
    elif linktype == LINK_SLL or linktype == LINK_SLL2:
        header_len = SLL_HEADER_LEN
        proto_at = SLL_PROTOCOL_AT
        if linktype == LINK_SLL2:
            header_len = SLL2_HEADER_LEN
            proto_at = SLL2_PROTOCOL_AT
        if p + header_len > end:
            return SKIP_MALFORMED
        ethertype = (int(buf[p + proto_at]) << 8) | int(buf[p + proto_at + 1])
        p += header_len
    elif (
        linktype == LINK_RAW
        or linktype == LINK_RAW_12
        or linktype == LINK_RAW_14
        or linktype == LINK_IPV4
        or linktype == LINK_IPV6
    ):
        if p >= end:
            return SKIP_MALFORMED
        version = int(buf[p]) >> 4
        if version != 4 and version != 6:
            return SKIP_NON_IP
    elif linktype == LINK_NULL or linktype == LINK_LOOP:
        if p + NULL_HEADER_LEN > end:
            return SKIP_MALFORMED
        family_be = (int(buf[p]) << 24) | (int(buf[p + 1]) << 16) | (int(buf[p + 2]) << 8) | int(buf[p + 3])
        family_le = (int(buf[p + 3]) << 24) | (int(buf[p + 2]) << 16) | (int(buf[p + 1]) << 8) | int(buf[p])
        if linktype == LINK_LOOP:
            family_le = family_be  # LOOP is always network order
        p += NULL_HEADER_LEN
        if family_be == AF_INET or family_le == AF_INET:
            version = 4
        elif (
            family_be == AF_INET6_LINUX
            or family_be == AF_INET6_NETBSD
            or family_be == AF_INET6_FREEBSD
            or family_be == AF_INET6_DARWIN
            or family_le == AF_INET6_LINUX
            or family_le == AF_INET6_NETBSD
            or family_le == AF_INET6_FREEBSD
            or family_le == AF_INET6_DARWIN
        ):
            version = 6
        else:
            return SKIP_NON_IP
    else:
        return SKIP_UNSUPPORTED_LINK
    if ethertype == ETHERTYPE_IPV4:
        version = 4
    elif ethertype == ETHERTYPE_IPV6:
        version = 6
    elif ethertype != -1:
        return SKIP_NON_IP

    # 2. Network layer -> transport header start, protocol, end of the IP packet.
    net = p
    if version == 4:
        if net + IPV4_MIN_HEADER > end:
            return SKIP_MALFORMED
        if (int(buf[net]) >> 4) != 4:
            return SKIP_MALFORMED
        ihl = (int(buf[net]) & 0x0F) * 4
        total_len = (int(buf[net + 2]) << 8) | int(buf[net + 3])
        # Total length 0: a TSO / BIG-TCP packet captured on the sending host; as Wireshark does, the captured
        # end bounds it.
        if ihl < IPV4_MIN_HEADER or (total_len != 0 and total_len < ihl) or net + ihl > end:
            return SKIP_MALFORMED
        if (((int(buf[net + 6]) & 0x1F) << 8) | int(buf[net + 7])) > 0:
            return SKIP_FRAGMENT
        ip_end = net + total_len
        if total_len == 0 or ip_end > end:
            ip_end = end
        proto = int(buf[net + 9])
        trans = net + ihl
    else:
        if net + IPV6_HEADER_LEN > end:
            return SKIP_MALFORMED
        if (int(buf[net]) >> 4) != 6:
            return SKIP_MALFORMED
        payload_len = (int(buf[net + 4]) << 8) | int(buf[net + 5])
        ip_end = end
        if payload_len > 0 and net + IPV6_HEADER_LEN + payload_len < end:
            ip_end = net + IPV6_HEADER_LEN + payload_len
        proto = int(buf[net + 6])
        trans = net + IPV6_HEADER_LEN
        n_ext = 0
        while (
            proto == IPPROTO_HOPOPTS
            or proto == IPPROTO_ROUTING
            or proto == IPPROTO_DSTOPTS
            or proto == IPPROTO_AH
            or proto == IPPROTO_FRAGMENT
        ):
            if n_ext == IPV6_MAX_EXT_HEADERS:
                return SKIP_MALFORMED
            n_ext += 1
            if proto == IPPROTO_FRAGMENT:
                if trans + 8 > ip_end:
                    return SKIP_MALFORMED
                if (((int(buf[trans + 2]) << 8) | int(buf[trans + 3])) >> 3) > 0:
                    return SKIP_FRAGMENT
                ext_len = 8
            else:
                if trans + 2 > ip_end:
                    return SKIP_MALFORMED
                if proto == IPPROTO_AH:
                    ext_len = (int(buf[trans + 1]) + 2) * 4
                else:
                    ext_len = (int(buf[trans + 1]) + 1) * 8
                if trans + ext_len > ip_end:
                    return SKIP_MALFORMED
            proto = int(buf[trans])
            trans += ext_len

    # 3. Transport layer -> payload start and ports.
    if proto == IPPROTO_TCP:
        if trans + TCP_MIN_HEADER > ip_end:
            return SKIP_MALFORMED
        data_off = (int(buf[trans + 12]) >> 4) * 4
        if data_off < TCP_MIN_HEADER or trans + data_off > ip_end:
            return SKIP_MALFORMED
        payload_off = trans + data_off
    elif proto == IPPROTO_UDP:
        if trans + UDP_HEADER_LEN > ip_end:
            return SKIP_MALFORMED
        payload_off = trans + UDP_HEADER_LEN
    else:
        return SKIP_NON_TCP_UDP
    src_port = (int(buf[trans]) << 8) | int(buf[trans + 1])
    dst_port = (int(buf[trans + 2]) << 8) | int(buf[trans + 3])

    # 4. Filters.
    if not keep_dns and (src_port == DNS_PORT or dst_port == DNS_PORT):
        return SKIP_DNS
    payload_len = ip_end - payload_off
    if payload_len <= 0:
        return SKIP_NO_PAYLOAD
    if payload_len > BODY_LEN:
        payload_len = BODY_LEN

    desc[D_NET_OFF] = net
    desc[D_IP_VERSION] = version
    desc[D_TRANS_OFF] = trans
    desc[D_PROTO] = proto
    desc[D_PAYLOAD_OFF] = payload_off
    desc[D_PAYLOAD_LEN] = payload_len
    desc[D_VLAN] = vlan
    desc[D_SRC_PORT] = src_port
    desc[D_DST_PORT] = dst_port
    desc[D_IP_END] = ip_end
    desc[D_KEEP_ROW] = (4 if version != 4 else 0) + (2 if proto != IPPROTO_TCP else 0)
    return KEPT


def row_byte(buf, desc, j, mask):
    """Value (0..255) of row position j (0 <= j < ROW_LEN) of a kept packet described by desc."""
    if j < HEADER_LEN:
        t = desc[D_KEEP_ROW] + (1 if mask == MASK_STRICT else 0)
        if HEADER_KEEP[t, j] == 0:
            return 0
        if j < NET_LEN:
            return buf[desc[D_NET_OFF] + j]
        return buf[desc[D_TRANS_OFF] + j - NET_LEN]
    k = j - HEADER_LEN
    if k < desc[D_PAYLOAD_LEN]:
        return buf[desc[D_PAYLOAD_OFF] + k]
    return 0


def write_row(buf, desc, mask, row, clear_to):
    """Write the uint8 row (length ROW_LEN) of a kept packet; the same bytes as row_byte, faster on the CPU.

    Bytes from the end of the payload up to clear_to are zeroed; the rest of the row must already be zero
    (pass ROW_LEN for a row of unknown content). Returns where the row's nonzero bytes may end, for the next
    write to the same row."""
    t = desc[D_KEEP_ROW] + (1 if mask == MASK_STRICT else 0)
    net = desc[D_NET_OFF]
    trans = desc[D_TRANS_OFF] - NET_LEN
    for j in range(NET_LEN):
        row[j] = buf[net + j] if HEADER_KEEP[t, j] else 0
    for j in range(NET_LEN, HEADER_LEN):
        row[j] = buf[trans + j] if HEADER_KEEP[t, j] else 0
    # Unsigned indices: numba then drops its negative-index handling and the two loops become plain
    # copy/fill code (several times faster than int64-indexed loops or slice assignments here).
    payload_off = numpy.uint64(desc[D_PAYLOAD_OFF])
    payload_len = numpy.uint64(desc[D_PAYLOAD_LEN])
    body = numpy.uint64(HEADER_LEN)
    for k in range(payload_len):
        row[body + k] = buf[payload_off + k]
    end = body + payload_len
    for k in range(end, numpy.uint64(min(clear_to, ROW_LEN))):
        row[k] = 0
    return end


def copy_addresses(buf, desc, src_addr, dst_addr):
    """Copy the unmasked source/destination addresses into 16-byte outputs (IPv4: first 4 bytes, rest zero)."""
    net = desc[D_NET_OFF]
    if desc[D_IP_VERSION] == 4:
        for k in range(4):
            src_addr[k] = buf[net + 12 + k]
            dst_addr[k] = buf[net + 16 + k]
        for k in range(4, 16):
            src_addr[k] = 0
            dst_addr[k] = 0
    else:
        for k in range(16):
            src_addr[k] = buf[net + 8 + k]
            dst_addr[k] = buf[net + 24 + k]


def flow_key(buf, desc):
    """Bidirectional flow key (uint64) of a kept packet.

    FNV-1a 64 over: ip version, protocol, vlan (2 bytes, big-endian), then the two endpoints in canonical
    order, each as 16 address bytes (IPv4 zero-padded) followed by the port (2 bytes, big-endian). The
    canonical order puts first the endpoint whose (address bytes, port) is lexicographically smaller.
    """
    net = desc[D_NET_OFF]
    version = desc[D_IP_VERSION]
    addr_len = 16
    src_at = net + 8
    dst_at = net + 24
    if version == 4:
        addr_len = 4
        src_at = net + 12
        dst_at = net + 16
    src_port = desc[D_SRC_PORT]
    dst_port = desc[D_DST_PORT]
    # Is (src address, src port) <= (dst address, dst port)?
    src_first = True
    decided = False
    for k in range(addr_len):
        a = buf[src_at + k]
        b = buf[dst_at + k]
        if a != b:
            src_first = a < b
            decided = True
            break
    if not decided:
        src_first = src_port <= dst_port
    a_at = src_at
    b_at = dst_at
    a_port = src_port
    b_port = dst_port
    if not src_first:
        a_at = dst_at
        b_at = src_at
        a_port = dst_port
        b_port = src_port
    prime = numpy.uint64(FNV64_PRIME)
    h = numpy.uint64(FNV64_OFFSET)
    h = (h ^ numpy.uint64(version)) * prime
    h = (h ^ numpy.uint64(desc[D_PROTO])) * prime
    h = (h ^ numpy.uint64(desc[D_VLAN] >> 8)) * prime
    h = (h ^ numpy.uint64(desc[D_VLAN] & 0xFF)) * prime
    for side in range(2):
        at = a_at
        port = a_port
        if side == 1:
            at = b_at
            port = b_port
        for k in range(addr_len):
            h = (h ^ numpy.uint64(buf[at + k])) * prime
        if addr_len == 4:
            h = h * numpy.uint64(FNV64_PRIME_POW12)
        h = (h ^ numpy.uint64(port >> 8)) * prime
        h = (h ^ numpy.uint64(port & 0xFF)) * prime
    return h
