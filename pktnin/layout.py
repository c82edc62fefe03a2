"""Packet layout v1: the single source of truth for how a captured packet becomes a 1500-byte row.

Row = network segment (20 bytes) | transport segment (20 bytes) | first 1460 payload bytes, zero-padded.
Bytes 0..39 feed the header branch (NIN1), bytes 40..1499 the body branch (NIN2).
The parse functions below are plain Python over scalars and uint8 arrays so that numba compiles the very
same logic for the CPU (njit) and for the GPU (cuda.jit device functions); see pktnin.kernels.
"""

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
SKIP_REASONS = (
    "kept",
    "unsupported-link",
    "non-ip",
    "fragment",
    "non-tcp-udp",
    "malformed",
    "dns",
    "no-payload",
)

# Masking profiles.
MASK_PAPER = 0
MASK_STRICT = 1
MASK_PROFILES = {"paper": MASK_PAPER, "strict": MASK_STRICT}
