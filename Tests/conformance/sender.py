#!/usr/bin/env python3
"""A migration-stream sender written from docs/protocol.md §3 alone (the conformance peer).

Migrates a memory image and a STATE blob into a destination (`pvmigrate listen`) with the
capabilities and stream count it offers, using exactly what HELLO_ACK grants:

  round 0: every page with data, each one's first 8 bytes XORed with 0xa5 (a wrong copy),
           as RAW, plus ZERO entries for the zero pages among the first ones;
  round 1: every page with data again — as DELTA against the wrong copy when DELTA was
           granted (so the destination's result is right only if it applied the deltas),
           else RAW;
  round 2: the first few pages with data unchanged — the no-op delta `00 01 00` (or RAW);
  then STREAM_END on every stream, STATE, COMMIT with the digest (§3.5), COMMIT_ACK.

Batches go out zstd-compressed (level 1, content size and checksum in the frame) when ZSTD was granted and
it is smaller. Page i goes on stream i mod streams (§3.4).

Image: --image DIR (pages.bin, state.bin, machine.json as receiver.py --dump writes them), or
--synthetic (a fixed 4 MiB machine whose page i, i % 8 != 0, i < 32, holds (31 i + 7 j) mod 256
in byte j). --golden FILE writes the control stream of a 1-stream migration of the
synthetic machine to FILE without any network (HELLO_ACK assumed to grant DELTA|PV_STATE):
the byte-for-byte capture the Swift encoder is checked against. --violate breaks the
protocol on purpose (see VIOLATIONS), to show a receiver rejects it.
"""

import argparse
import json
import os
import socket
import struct
import sys
import threading

import pvwire as w

PERTURB = b"\xa5" * 8
# Deliberate violations, each of which a receiver must reject: encode with the offered rather
# than the granted capabilities; put every page on stream 0; a delta token with an empty
# literal; a STREAM_END count one too high.
VIOLATIONS = ("ignore-grant", "wrong-stream", "bad-delta", "stream-end")
BATCH = 16  # pages per batch


def synthetic():
    memory = {}
    for i in range(32):
        if i % 8:
            memory[i] = bytes((31 * i + 7 * j) & 0xFF for j in range(w.PAGE))
    machine = {"memory_bytes": 4 << 20, "vcpus": 1, "irqchip": True, "kernel_sha256": "11" * 32, "name": "golden"}
    state = b"PVMS" + struct.pack("<HH", 1, 0)  # an empty container: the frame layer treats STATE as opaque
    return memory, machine, state


def load(directory):
    memory = {}
    with open(os.path.join(directory, "pages.bin"), "rb") as f:
        while True:
            head = f.read(8)
            if not head:
                break
            (i,) = struct.unpack("<Q", head)
            memory[i] = f.read(w.PAGE)
    with open(os.path.join(directory, "machine.json")) as f:
        machine = json.load(f)
    with open(os.path.join(directory, "state.bin"), "rb") as f:
        state = f.read()
    return memory, machine, state


def without_pv_section(state):
    """The STATE blob without its PV section (tag 4), when that section is empty (§1.8);
    a guest whose PV state is in use cannot go to a destination that declined PV_STATE."""
    sections = w.state_sections(state)
    pv = sections.get(4)
    if pv is None:
        return state
    if any(pv):
        raise w.ProtocolError("the destination declined PV_STATE, but this guest's PV state is in use", w.E_VERSION)
    out = [b"PVMS", struct.pack("<HH", w.state_version(state), len(sections) - 1)]
    for tag, payload in sections.items():  # insertion order = the blob's order
        if tag != 4:
            out.append(struct.pack("<HHI", tag, 0, len(payload)) + payload)
    return b"".join(out)


class Sender:
    def __init__(self, memory, machine, state, offer, streams, mid, violate=None):
        self.memory, self.machine, self.state = memory, machine, state
        self.offer, self.asked, self.mid = offer, streams, mid
        self.zstd = None
        self.violate = violate  # a deliberate protocol violation (VIOLATIONS), to test receivers
        self.commit_work = []   # (prepare µs, start µs) from each PONG_WORK (capability COMMIT_WORK)

    def handshake(self, connect):
        control = connect()
        control.send(w.HELLO, w.hello(w.VERSION, w.VERSION, self.asked, self.offer, self.mid))
        p = w.expect(control.receive(), w.HELLO_ACK, 16)
        version, zero, streams, granted = struct.unpack("<HHIQ", p)
        if version != w.VERSION or zero:
            raise w.ProtocolError(f"HELLO_ACK chose version {version}", w.E_VERSION)
        if granted & ~self.offer or not 1 <= streams <= self.asked:
            raise w.ProtocolError(f"HELLO_ACK grants {granted:#x} / {streams} streams, more than offered")
        self.accept_ack(streams, granted)
        control.send(w.MACHINE, self.machine_payload())
        channels = [control]
        for idx in range(1, streams):
            ch = connect()
            ch.send(w.JOIN, self.mid + struct.pack("<I", idx))
            channels.append(ch)
        return channels

    def accept_ack(self, streams, granted):
        if self.violate == "ignore-grant":
            granted = self.offer  # the bug of issue 10: encode with what was offered
        self.streams, self.granted = streams, granted
        if granted & w.CAP_ZSTD:
            import zstandard  # one compressor per stream: a ZstdCompressor is not thread-safe
            self.zstd = [zstandard.ZstdCompressor(level=1, write_content_size=True, write_checksum=True)
                         for _ in range(streams)]

    def machine_payload(self):
        m = self.machine
        return w.machine(m["memory_bytes"], m["vcpus"], m["irqchip"], bytes.fromhex(m["kernel_sha256"]), m["name"])

    def send_batch(self, s, ch, rnd, entries):
        plain = w.batch_encode(rnd, entries)
        if self.zstd is not None:
            packed = self.zstd[s].compress(plain)
            if len(packed) < len(plain):
                return ch.send(w.PAGES, packed, w.FLAG_ZSTD)
        return ch.send(w.PAGES, plain)

    def send_round(self, channels, rnd, entries):
        """entries: [(page_index, encoding, data)] in order; each goes on its page's stream."""
        per = [[] for _ in channels]
        for e in entries:
            per[0 if self.violate == "wrong-stream" else e[0] % len(channels)].append(e)
        totals = [0] * len(channels)

        def stream(s):
            for k in range(0, len(per[s]), BATCH):
                totals[s] += self.send_batch(s, channels[s], rnd, per[s][k:k + BATCH])

        threads = [threading.Thread(target=stream, args=(s,)) for s in range(1, len(channels))]
        for t in threads:
            t.start()
        stream(0)
        for t in threads:
            t.join()
        channels[0].send(w.ROUND, struct.pack("<IIQQ", rnd, 0, len(entries), sum(totals)))
        if self.granted & w.CAP_PING:  # §3.2: PONG echoes the nonce, before any other frame
            channels[0].send(w.PING, struct.pack("<Q", rnd))
            if self.granted & w.CAP_COMMIT_WORK:  # PONG_WORK: the nonce, then the destination's work in µs
                answer = w.expect(channels[0].receive(), w.PONG_WORK, 16)
                self.commit_work.append(struct.unpack("<II", answer[8:]))
                answer = answer[:8]
            else:
                answer = w.expect(channels[0].receive(), w.PONG, 8)
            if answer != struct.pack("<Q", rnd):
                raise w.ProtocolError("PONG does not echo the PING's nonce")

    def balloon_mode(self):
        """BALLOON_MAP with PV_STATE granted (§3.2.1): the map goes in BALLOON frames, STATE
        carries the PV section without it."""
        return bool(self.granted & w.CAP_BALLOON_MAP and self.granted & w.CAP_PV_STATE)

    def map_words(self):
        pv = w.state_sections(self.state).get(4)
        words = (w.page_count(self.machine["memory_bytes"]) + 63) // 64
        return list(struct.unpack_from(f"<{words}Q", pv, 16)) if pv is not None and len(pv) > 16 else [0] * words

    def send_balloon(self, control, final):
        """Round 0 is followed by the whole map's nonzero words, one run each; the pause (before
        STREAM_END) by the final update, empty: the map did not change."""
        words = self.map_words()
        runs = [] if final else [(i, [x]) for i, x in enumerate(words) if x]
        control.send(w.BALLOON, w.balloon_encode(final, w.balloon_digest(words), runs))

    def rounds(self, channels):
        data = sorted(self.memory)
        wrong = {i: bytes(a ^ b for a, b in zip(self.memory[i][:8], PERTURB)) + self.memory[i][8:] for i in data}
        zeros = [i for i in range(min(32, w.page_count(self.machine["memory_bytes"]))) if i not in self.memory]
        r0 = sorted([(i, w.ENC_RAW, wrong[i]) for i in data] + [(i, w.ENC_ZERO, b"") for i in zeros])
        self.send_round(channels, 0, r0)
        if self.balloon_mode():
            self.send_balloon(channels[0], final=False)
        delta = self.granted & w.CAP_DELTA
        r1 = [(i, w.ENC_DELTA, w.delta_encode(self.memory[i], wrong[i])) if delta else (i, w.ENC_RAW, self.memory[i])
              for i in data]
        if self.violate == "bad-delta":
            r1[-1] = (r1[-1][0], w.ENC_DELTA, b"\x00\x00\x00")  # a token with an empty literal
        self.send_round(channels, 1, r1)
        r2 = [(i, w.ENC_DELTA, b"\x00\x01\x00") if delta else (i, w.ENC_RAW, self.memory[i]) for i in data[:3]]
        self.send_round(channels, 2, r2)
        if self.balloon_mode():
            self.send_balloon(channels[0], final=True)
        for ch in channels[1:] + channels[:1]:  # STREAM_END: data streams, then control
            ch.send(w.STREAM_END, struct.pack("<Q", ch.sent + (self.violate == "stream-end")))

    # --- The commit protocol (§3.6): STATE, COMMIT → PREPARED ← GO → DONE ←. The VM this
    # sender replays exists nowhere else, so it may always give it up: it sends GO at once.
    def commit(self, control, wait_done=True):
        state = self.state if self.granted & w.CAP_PV_STATE else without_pv_section(self.state)
        if self.balloon_mode() and 4 in w.state_sections(state):
            state = w.pv_with_map(state, [])  # the map went in BALLOON frames (§3.2.1)
        control.send(w.STATE, state)
        d, n = w.digest(self.memory)
        control.send(w.COMMIT, struct.pack("<QQQ", d, n, w.state_digest(state)))
        if not wait_done:
            return d, n
        if w.expect(control.receive(), w.PREPARED, 16) != self.mid:
            raise w.ProtocolError("PREPARED names another migration")
        control.send(w.GO, self.mid)
        if w.expect(control.receive(), w.DONE, 16) != self.mid:
            raise w.ProtocolError("DONE names another migration")
        return d, n


def golden(path):
    memory, machine, state = synthetic()
    s = Sender(memory, machine, state, w.CAP_DELTA | w.CAP_PV_STATE, 1, bytes(range(16)))
    control = w.Channel(None)
    control.out = []
    control.send(w.HELLO, w.hello(w.VERSION, w.VERSION, 1, s.offer, s.mid))
    s.accept_ack(1, s.offer)
    control.send(w.MACHINE, s.machine_payload())
    s.rounds([control])
    s.commit(control, wait_done=False)
    with open(path, "wb") as f:
        f.write(b"".join(control.out))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--to", help="HOST:PORT of the destination")
    ap.add_argument("--image")
    ap.add_argument("--synthetic", action="store_true")
    ap.add_argument("--golden")
    ap.add_argument("--tls-dir")
    ap.add_argument("--insecure", action="store_true")
    ap.add_argument("--offer", default="zstd,delta,pv-state")
    ap.add_argument("--streams", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=30)
    ap.add_argument("--violate", choices=VIOLATIONS, help="break the protocol on purpose (tests a receiver's checks)")
    args = ap.parse_args()
    if args.golden:
        golden(args.golden)
        return
    if bool(args.tls_dir) == args.insecure or not args.to or bool(args.image) == args.synthetic:
        ap.error("give --to, one of --image/--synthetic and one of --tls-dir/--insecure")
    memory, machine, state = load(args.image) if args.image else synthetic()
    ctx = w.tls_context(args.tls_dir, server=False) if args.tls_dir else None
    host, port = args.to.rsplit(":", 1)

    def connect():
        sock = socket.create_connection((host, int(port)), timeout=args.timeout)
        if ctx:
            sock = ctx.wrap_socket(sock, server_side=False, server_hostname=host)
        return w.Channel(sock, args.timeout)

    s = Sender(memory, machine, state, w.parse_caps(args.offer), args.streams, os.urandom(16), args.violate)
    channels = []
    try:
        channels = s.handshake(connect)
        s.rounds(channels)
        d, n = s.commit(channels[0])
        print(json.dumps({"ok": True, "digest": f"{d:016x}", "pages_with_data": n, "streams": s.streams,
                          "granted": w.caps_text(s.granted), "commit_work": s.commit_work}))
    except (w.ProtocolError, w.PeerError, OSError) as e:
        if channels and isinstance(e, w.ProtocolError):
            channels[0].send_error(e.code, str(e))
        elif channels and isinstance(e, OSError):
            try:  # the destination may have said why before it closed (§3.6)
                channels[0].sock.settimeout(2)
                while True:
                    channels[0].receive()
            except (w.PeerError, w.ProtocolError, OSError) as why:
                e = f"{e}; then: {why}"
        print(json.dumps({"ok": False, "error": str(e)}))
        sys.exit(1)
    finally:
        for c in channels:
            c.close()


if __name__ == "__main__":
    main()
