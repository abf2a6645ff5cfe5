"""The pvmigrate migration stream, version 2, written from docs/protocol.md §3 alone.

Shared by the conformance receiver and sender: frames (§3.2), page batches (§3.3),
the DELTA encoding (§3.3.1), the STATE container's PV section (§1.8) and the memory
digest (§3.5). Standard library plus `zstandard`. Every decoder here is strict: a
violation raises ProtocolError with the error code §3.6 says answers it.
"""

import os
import socket
import ssl
import struct

MAGIC = 0x474D5650
HEADER = struct.Struct("<IHHII")
MAX_PAYLOAD = 16 << 20
PAGE = 4096
ENTRY = struct.Struct("<QBBHI")
BATCH_HEADER = struct.Struct("<IIQ")
MAX_BATCH = 1024
FLAG_ZSTD = 1
ZSTD_MAX_WINDOW = 8 << 20  # the largest window a receiver must accept (§3.3)

HELLO, HELLO_ACK, MACHINE, JOIN, PAGES, ROUND, STATE, COMMIT, COMMIT_ACK, ERROR, STREAM_END = range(1, 12)
PREPARED, GO, DONE, RESOLVE, OUTCOME = range(12, 17)  # version 2: the commit protocol (§3.6)
PING, PONG = 17, 18  # capability PING (§3.2): round trips on the control stream during pre-copy
PONG_WORK = 19  # capability COMMIT_WORK (§3.2): PONG with the destination's own commit work
BALLOON = 20  # capability BALLOON_MAP (§3.2.1): the balloon map ahead of the pause
NAMES = {1: "HELLO", 2: "HELLO_ACK", 3: "MACHINE", 4: "JOIN", 5: "PAGES", 6: "ROUND", 7: "STATE",
         8: "COMMIT", 9: "COMMIT_ACK", 10: "ERROR", 11: "STREAM_END", 12: "PREPARED", 13: "GO",
         14: "DONE", 15: "RESOLVE", 16: "OUTCOME", 17: "PING", 18: "PONG", 19: "PONG_WORK",
         20: "BALLOON"}
VERSION = 2  # the only version this peer speaks (§3.6.6)
# The largest payload of each type (§3.2).
LIMITS = {HELLO: 32, HELLO_ACK: 16, MACHINE: 50 + 255, JOIN: 20, PAGES: MAX_PAYLOAD, ROUND: 24,
          STATE: MAX_PAYLOAD, COMMIT: 24, COMMIT_ACK: 8, ERROR: 8 + 4096, STREAM_END: 8,
          PREPARED: 16, GO: 16, DONE: 16, RESOLVE: 16, OUTCOME: 8, PING: 8, PONG: 8, PONG_WORK: 16,
          BALLOON: MAX_PAYLOAD}

CAP_ZSTD, CAP_DELTA, CAP_PV_STATE, CAP_PING, CAP_COMMIT_WORK, CAP_BALLOON_MAP = 1, 2, 4, 8, 16, 32
CAPS_ALL = CAP_ZSTD | CAP_DELTA | CAP_PV_STATE | CAP_PING | CAP_COMMIT_WORK | CAP_BALLOON_MAP
CAP_NAMES = {"zstd": CAP_ZSTD, "delta": CAP_DELTA, "pv-state": CAP_PV_STATE, "ping": CAP_PING,
             "commit-work": CAP_COMMIT_WORK, "balloon-map": CAP_BALLOON_MAP}

ENC_ZERO, ENC_RAW, ENC_DELTA = 0, 1, 2

# Error codes (§3.6).
E_PROTOCOL, E_VERSION, E_RESOURCES, E_DIGEST, E_RESTORE, E_CANCELLED, E_TIMEOUT, E_INTERNAL = range(1, 9)


class ProtocolError(Exception):
    def __init__(self, reason, code=E_PROTOCOL):
        super().__init__(reason)
        self.code = code


class PeerError(Exception):
    """The peer sent an ERROR frame."""

    def __init__(self, code, reason):
        super().__init__(f"peer sent ERROR {code}: {reason}")
        self.code = code


def parse_caps(text):
    caps = 0
    for word in filter(None, (w.strip() for w in text.split(","))):
        if word != "none":
            caps |= CAP_NAMES[word]
    return caps


def caps_text(caps):
    return ",".join(n for n, b in CAP_NAMES.items() if caps & b) or "none"


# --- Transport (§3.1) ---------------------------------------------------------------------

def tls_context(tls_dir, server):
    """TLS 1.3 only, mutual: our cert.pem/key.pem, the peer verified against ca.pem."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(os.path.join(tls_dir, "cert.pem"), os.path.join(tls_dir, "key.pem"))
    ctx.load_verify_locations(os.path.join(tls_dir, "ca.pem"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    if not server:
        # §3.1 "Names": the listener's certificate must carry the host dialed (wrap_socket's
        # server_hostname; an IP address is matched against the IP subjectAltNames).
        ctx.check_hostname = True
    return ctx


class Channel:
    """Frames over one connection; counts frames as §3.2's STREAM_END needs them."""

    def __init__(self, sock, timeout=30.0):
        if sock is not None:
            sock.settimeout(timeout)
        self.sock = sock
        self.sent = 0
        self.received = 0
        self.out = None  # when set (a list), frames are also recorded here: golden captures

    def send(self, ftype, payload=b"", flags=0):
        data = HEADER.pack(MAGIC, ftype, flags, len(payload), 0) + payload
        if self.out is not None:
            self.out.append(data)
        if self.sock is not None:
            self.sock.sendall(data)
        self.sent += 1
        return len(data)

    def _read(self, n):
        chunks, left = [], n
        while left:
            b = self.sock.recv(min(left, 1 << 20))
            if not b:
                raise ProtocolError(f"connection closed with {left} of {n} bytes unread")
            chunks.append(b)
            left -= len(b)
        return b"".join(chunks)

    def receive(self):
        """(type, flags, payload), header validated per §3.2."""
        magic, ftype, flags, length, reserved = HEADER.unpack(self._read(16))
        if magic != MAGIC:
            raise ProtocolError(f"bad magic 0x{magic:08x}")
        if ftype not in LIMITS:
            raise ProtocolError(f"unknown frame type {ftype}")
        if flags & ~(FLAG_ZSTD if ftype == PAGES else 0):
            raise ProtocolError(f"{NAMES[ftype]} with unknown flags 0x{flags:x}")
        if reserved:
            raise ProtocolError("reserved header bytes are not zero")
        if length > LIMITS[ftype]:
            raise ProtocolError(f"{NAMES[ftype]} of {length} bytes, over its limit {LIMITS[ftype]}")
        payload = self._read(length)
        self.received += 1
        if ftype == ERROR:
            if length < 8:
                raise ProtocolError("ERROR shorter than 8 bytes")
            code, zero = struct.unpack_from("<II", payload)
            raise PeerError(code, payload[8:].decode("utf-8", "replace"))
        return ftype, flags, payload

    def send_error(self, code, reason):
        try:
            self.send(ERROR, struct.pack("<II", code, 0) + reason.encode()[:4096])
        except OSError:
            pass

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass


def expect(frame, ftype, size=None):
    t, _, payload = frame
    if t != ftype:
        raise ProtocolError(f"got {NAMES[t]} where {NAMES[ftype]} was expected")
    if size is not None and len(payload) != size:
        raise ProtocolError(f"{NAMES[t]} of {len(payload)} bytes, expected {size}")
    return payload


# --- Frame payloads (§3.2) ----------------------------------------------------------------

def hello(min_v, max_v, streams, caps, mid):
    return struct.pack("<HHIQ", min_v, max_v, streams, caps) + mid


def machine(memory_bytes, vcpus, irqchip, kernel_sha256, name, nic=False):
    n = name.encode()
    flags = (1 if irqchip else 0) | (2 if nic else 0)
    return struct.pack("<QII", memory_bytes, vcpus, flags) + kernel_sha256 + struct.pack("<H", len(n)) + n


def parse_machine(p):
    if len(p) < 50:
        raise ProtocolError("MACHINE shorter than 50 bytes")
    memory_bytes, vcpus, flags = struct.unpack_from("<QII", p)
    sha, (n,) = p[16:48], struct.unpack_from("<H", p, 48)
    if len(p) != 50 + n or n == 0 or n > 255:
        raise ProtocolError("MACHINE name length does not match the payload")
    if flags & ~3:
        raise ProtocolError("MACHINE flags has unknown bits")
    return {"memory_bytes": memory_bytes, "vcpus": vcpus, "irqchip": bool(flags & 1), "nic": bool(flags & 2),
            "kernel_sha256": sha.hex(), "name": p[50:].decode("utf-8")}


# --- Memory layout (§1.2) -----------------------------------------------------------------

def page_count(memory_bytes):
    """RAM pages: one per 4 KiB of the configured size (RAM above 3 GiB moves to 4 GiB, same count)."""
    return memory_bytes // PAGE


# --- DELTA (§3.3.1) -----------------------------------------------------------------------

def _varint(b, pos, limit, what):
    value, shift, start = 0, 0, pos
    while True:
        if pos >= len(b):
            raise ProtocolError(f"delta: {what} varint cut off at byte {start}")
        byte = b[pos]
        pos += 1
        if byte == 0 and shift:
            raise ProtocolError(f"delta: {what} varint at byte {start} is not minimal")
        value |= (byte & 0x7F) << shift
        if value > limit:
            raise ProtocolError(f"delta: {what} {value} runs past the page ({limit} left)")
        if not byte & 0x80:
            return value, pos
        shift += 7


def delta_tokens(delta):
    """Validates a DELTA entry's data; returns [(page_offset, data_offset, n)]."""
    if not 1 <= len(delta) <= PAGE - 1:
        raise ProtocolError(f"delta of {len(delta)} bytes, not 1-4095")
    tokens, pos, cursor = [], 0, 0
    while pos < len(delta):
        skip, pos = _varint(delta, pos, PAGE - cursor, "skip")
        cursor += skip
        n, pos = _varint(delta, pos, PAGE - cursor, "length")
        if n == 0:
            raise ProtocolError("delta: token with an empty literal")
        if pos + n > len(delta):
            raise ProtocolError("delta: literal runs past the end of the delta")
        tokens.append((cursor, pos, n))
        pos += n
        cursor += n
    return tokens


def delta_apply(page, delta, tokens):
    out = bytearray(page)
    for at, src, n in tokens:
        out[at:at + n] = bytes(x ^ y for x, y in zip(out[at:at + n], delta[src:src + n]))
    return bytes(out)


def _put_varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def delta_encode(new, old):
    """A valid delta from old to new (one token per run of differing bytes), or None when it
    would not be shorter than the page. An unchanged page gives the no-op token 00 01 00."""
    out, cursor, i = bytearray(), 0, 0
    while i < PAGE:
        if new[i] == old[i]:
            i += 1
            continue
        j = i
        while j < PAGE and new[j] != old[j]:
            j += 1
        out += _put_varint(i - cursor) + _put_varint(j - i) + bytes(a ^ b for a, b in zip(new[i:j], old[i:j]))
        if len(out) >= PAGE:
            return None
        cursor = i = j
    return bytes(out) if out else b"\x00\x01\x00"


# --- Page batches (§3.3) ------------------------------------------------------------------

def batch_encode(round_no, entries):
    """entries: [(page_index, encoding, data)] -> the plain PAGES payload."""
    table = b"".join(ENTRY.pack(i, e, 0, 0, len(d)) for i, e, d in entries)
    return BATCH_HEADER.pack(round_no, len(entries), 0) + table + b"".join(d for _, _, d in entries)


def batch_decode(flags, payload, pages, allow_zstd, allow_delta, dctx):
    """Validates a PAGES payload completely and returns [(page_index, encoding, data, tokens)]."""
    if flags & FLAG_ZSTD:
        if not allow_zstd:
            raise ProtocolError("ZSTD batch although ZSTD was not granted")
        import zstandard
        try:
            params = zstandard.get_frame_parameters(payload)
        except zstandard.ZstdError as e:
            raise ProtocolError(f"bad zstd frame: {e}")
        limit = MAX_BATCH * (ENTRY.size + PAGE) + 16
        if params.content_size in (0, zstandard.CONTENTSIZE_UNKNOWN) or params.content_size > limit:
            raise ProtocolError(f"zstd frame declares content size {params.content_size}")
        if not params.has_checksum or params.dict_id or params.window_size > ZSTD_MAX_WINDOW:
            raise ProtocolError(f"zstd frame: checksum {params.has_checksum}, dictionary {params.dict_id}, "
                                f"window {params.window_size}")
        try:
            d = dctx.decompressobj()
            plain = d.decompress(payload)
        except zstandard.ZstdError as e:
            raise ProtocolError(f"zstd frame does not decode: {e}")
        if not d.eof or d.unused_data or len(plain) != params.content_size:
            raise ProtocolError("the PAGES payload is not exactly one complete zstd frame of its declared size")
        payload = plain
    if len(payload) < 16:
        raise ProtocolError("batch shorter than its header")
    round_no, count, reserved = BATCH_HEADER.unpack_from(payload)
    if not 1 <= count <= MAX_BATCH or reserved:
        raise ProtocolError(f"batch header: count {count}, reserved {reserved}")
    if flags & FLAG_ZSTD and len(payload) > count * (ENTRY.size + PAGE) + 16:
        raise ProtocolError("zstd frame declares more than count pages can hold")
    offset = 16 + count * ENTRY.size
    if len(payload) < offset:
        raise ProtocolError("batch table cut off")
    out = []
    for k in range(count):
        index, enc, pad8, pad16, length = ENTRY.unpack_from(payload, 16 + k * ENTRY.size)
        if index >= pages or pad8 or pad16:
            raise ProtocolError(f"entry {k}: page {index} of {pages}, reserved {pad8}/{pad16}")
        if enc == ENC_ZERO and length == 0:
            data, tokens = b"", None
        elif enc == ENC_RAW and length == PAGE:
            data, tokens = payload[offset:offset + PAGE], None
        elif enc == ENC_DELTA and 1 <= length < PAGE:
            if not allow_delta:
                raise ProtocolError("DELTA entry although DELTA was not granted")
            data = payload[offset:offset + length]
            tokens = None
        else:
            raise ProtocolError(f"entry {k}: encoding {enc} with {length} bytes")
        if offset + length > len(payload):
            raise ProtocolError(f"entry {k}: data runs past the payload")
        if enc == ENC_DELTA:
            tokens = delta_tokens(data)
        out.append((index, enc, data, tokens))
        offset += length
    if offset != len(payload):
        raise ProtocolError(f"{len(payload) - offset} bytes after the last entry's data")
    return round_no, out


# --- STATE (§1.8): the container and its PV section ---------------------------------------

STATE_VERSIONS = (1, 2, 3, 4)  # §1.8: format 2 adds the serial section (tag 5), 3 the vCPU count (tag 6), 4 the NIC (tag 7)
VCPU_TAGS = range(0x100, 0x200)  # §1.8: "vcpu i" is tag 0x100 + i


def state_version(blob):
    return struct.unpack_from("<H", blob, 4)[0]


def state_sections(blob):
    if len(blob) < 8 or blob[:4] != b"PVMS":
        raise ProtocolError("STATE is not a PVMS blob", E_RESTORE)
    version, count = struct.unpack_from("<HH", blob, 4)
    if version not in STATE_VERSIONS:
        raise ProtocolError(f"STATE format version {version}", E_RESTORE)
    pos, sections = 8, {}
    for _ in range(count):
        if pos + 8 > len(blob):
            raise ProtocolError("STATE section header cut off", E_RESTORE)
        tag, reserved, length = struct.unpack_from("<HHI", blob, pos)
        pos += 8
        if reserved or tag in sections or pos + length > len(blob):
            raise ProtocolError(f"STATE section {tag} malformed", E_RESTORE)
        sections[tag] = blob[pos:pos + length]
        pos += length
    if pos != len(blob):
        raise ProtocolError("trailing bytes after the STATE sections", E_RESTORE)
    vcpus = sum(1 for tag in sections if tag in VCPU_TAGS)
    if version >= 3:
        count = sections.get(6)
        if count is None or len(count) != 4 or struct.unpack("<I", count)[0] != vcpus:
            raise ProtocolError(f"STATE vCPU count (tag 6) missing or not the {vcpus} vCPU sections", E_RESTORE)
    elif 6 in sections:
        raise ProtocolError(f"STATE format {version} with a vCPU count (tag 6)", E_RESTORE)
    if version < 4 and 7 in sections:
        raise ProtocolError(f"STATE format {version} with a NIC section (tag 7)", E_RESTORE)
    if 7 in sections:
        net_section(sections[7], vcpus)
    if any(0x100 + i not in sections for i in range(vcpus)):
        raise ProtocolError("STATE vCPU sections with a gap", E_RESTORE)
    return sections


NET_SECTION = struct.Struct("<6sHQIIIIQQQQQ")  # §1.8 "net", §5.8: 72 bytes


def net_section(payload, vcpus):
    """The PV NIC's section (tag 7), checked as §5.8 says a reader must: size, reserved 0,
    a unicast MAC other than zero, a page-aligned net page below 4 GiB, zero indices when
    never attached, one of the VM's vCPUs."""
    if len(payload) != NET_SECTION.size:
        raise ProtocolError(f"NIC section of {len(payload)} bytes, expected {NET_SECTION.size}", E_RESTORE)
    (mac, reserved, page, tx_cons, rx_prod, rx_vcpu, announce,
     tx_frames, tx_bytes, rx_frames, rx_bytes, rx_dropped) = NET_SECTION.unpack(payload)
    if reserved:
        raise ProtocolError("NIC section: reserved field not zero", E_RESTORE)
    if mac[0] & 1 or mac == bytes(6):
        raise ProtocolError(f"NIC section: {mac.hex(':')} is not a unicast MAC", E_RESTORE)
    if page % PAGE or page >= 1 << 32:
        raise ProtocolError(f"NIC section: net page 0x{page:x}", E_RESTORE)
    if page == 0 and (tx_cons or rx_prod):
        raise ProtocolError("NIC section: ring indices of a NIC never attached", E_RESTORE)
    if rx_vcpu >= vcpus:
        raise ProtocolError(f"NIC section: vCPU {rx_vcpu} of {vcpus}", E_RESTORE)
    return {"mac": mac.hex(":"), "net_page": page, "tx_cons": tx_cons, "rx_prod": rx_prod, "rx_vcpu": rx_vcpu,
            "announce": announce, "tx_frames": tx_frames, "tx_bytes": tx_bytes, "rx_frames": rx_frames,
            "rx_bytes": rx_bytes, "rx_dropped": rx_dropped}


def balloon_pages(sections, pages):
    """The ballooned pages of the PV section (tag 4), as a set of page indexes."""
    pv = sections.get(4)
    if pv is None:
        return set()
    words = (pages + 63) // 64
    if len(pv) != 16 + 8 * words:
        raise ProtocolError(f"PV section of {len(pv)} bytes, expected {16 + 8 * words}", E_RESTORE)
    out = set()
    for w in range(words):
        (bits,) = struct.unpack_from("<Q", pv, 16 + 8 * w)
        while bits:
            low = bits & -bits
            out.add(w * 64 + low.bit_length() - 1)
            bits ^= low
    return out


# --- The memory digest (§3.5) -------------------------------------------------------------

M64 = (1 << 64) - 1
P = 0x100000001B3
_WORDS = struct.Struct("<512Q")


# --- The balloon map in BALLOON frames (§3.2.1) -------------------------------------------

M64 = (1 << 64) - 1


def _splitmix(x):
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def balloon_term(i, word):
    k = _splitmix((i + 0x9E3779B97F4A7C15) & M64)
    return (_splitmix(word ^ k) - _splitmix(k)) & M64


def balloon_digest(words):
    return sum(balloon_term(i, x) for i, x in enumerate(words) if x) & M64


def balloon_encode(final, digest, runs):
    """runs: [(first_word, [words])], increasing and not overlapping."""
    out = [struct.pack("<BBHIQ", 1 if final else 0, 0, 0, len(runs), digest)]
    for first, words in runs:
        out.append(struct.pack("<II", first, len(words)) + struct.pack(f"<{len(words)}Q", *words))
    return b"".join(out)


def balloon_apply(words, payload, pages):
    """Applies one BALLOON payload to `words` (a list, changed in place only if it is valid);
    returns its final flag. Checks the layout, the map's bounds and the digest."""
    if len(payload) < 16:
        raise ProtocolError(f"BALLOON of {len(payload)} bytes")
    final, r8, r16, count, digest = struct.unpack_from("<BBHIQ", payload)
    if final > 1 or r8 or r16:
        raise ProtocolError("BALLOON flags or reserved bytes")
    new, pos, nxt = list(words), 16, 0
    for _ in range(count):
        if pos + 8 > len(payload):
            raise ProtocolError("BALLOON run cut short")
        first, n = struct.unpack_from("<II", payload, pos)
        pos += 8
        if n == 0 or first < nxt or first + n > len(words) or pos + 8 * n > len(payload):
            raise ProtocolError(f"BALLOON run of {n} words at word {first} (map of {len(words)})")
        new[first:first + n] = struct.unpack_from(f"<{n}Q", payload, pos)
        pos += 8 * n
        nxt = first + n
    if pos != len(payload):
        raise ProtocolError("BALLOON trailing bytes")
    if pages % 64 and new and new[-1] >> (pages % 64):
        raise ProtocolError("BALLOON bits past the last page")
    if balloon_digest(new) != digest:
        raise ProtocolError(f"BALLOON map digest {balloon_digest(new):016x}, frame says {digest:016x}", E_DIGEST)
    words[:] = new
    return final == 1


def pv_with_map(blob, words):
    """STATE with the PV section's map put back (`words`), as a STATE without BALLOON_MAP has it."""
    sections = state_sections(blob)
    pv = sections.get(4)
    if pv is None:
        return blob
    sections[4] = pv[:16] + struct.pack(f"<{len(words)}Q", *words)
    body = b"".join(struct.pack("<HHI", t, 0, len(p)) + p for t, p in sections.items())
    return blob[:4] + struct.pack("<HH", state_version(blob), len(sections)) + body


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & M64


def mix(i, page):
    w = _WORDS.unpack(page)
    a, b, c, d = i ^ 0x9E3779B97F4A7C15, i ^ 0xC2B2AE3D27D4EB4F, i ^ 0x165667B19E3779F9, i ^ 0x27D4EB2F165667C5
    for k in range(0, 512, 4):
        a = ((a ^ w[k]) * P) & M64
        b = ((b ^ w[k + 1]) * P) & M64
        c = ((c ^ w[k + 2]) * P) & M64
        d = ((d ^ w[k + 3]) * P) & M64
    h = a ^ _rotl(b, 16) ^ _rotl(c, 32) ^ _rotl(d, 48)
    h ^= h >> 29
    h = (h * P) & M64
    return h ^ (h >> 32)


ZERO_PAGE = bytes(PAGE)


def digest(memory, excluded=()):
    """(digest, pages_with_data) over {page_index: bytes}; absent pages are zero."""
    total, n = 0, 0
    for i, page in memory.items():
        if page != ZERO_PAGE and i not in excluded:
            total = (total + mix(i, page)) & M64
            n += 1
    return total, n


# --- The STATE digest (§3.6.2) -------------------------------------------------------------

def state_digest(blob):
    """COMMIT's state_digest over a STATE payload: its bytes as little-endian u64 words (the
    last zero-padded), the length mixed in first."""
    n = len(blob)
    padded = blob + bytes(-n % 8)
    h = n ^ 0x9E3779B97F4A7C15
    for (word,) in struct.iter_unpack("<Q", padded):
        h = ((h ^ word) * P) & M64
        h ^= h >> 29
    h ^= h >> 32
    h = (h * P) & M64
    return h ^ (h >> 29)
