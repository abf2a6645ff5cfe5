#!/usr/bin/env python3
"""A migration-stream receiver written from docs/protocol.md §3 alone (the conformance peer).

Accepts one migration on a loopback port, grants only the capabilities and streams it is
told to, checks everything the source sends against §3 (frame headers, exact payloads,
batches, deltas, the page-to-stream rule, STREAM_END counts, ROUND accounting, STATE's
container), computes the memory digest (§3.5) over the memory it built and compares it
with COMMIT's. It never runs the VM: it is a sink. On success it answers COMMIT_ACK 0 (so
the source lets go of its copy — the driver relays the VM on with sender.py), writes a JSON
result and optionally dumps the received image for sender.py.

    receiver.py --port-file F [--tls-dir D | --insecure] [--accept zstd,delta,pv-state]
                [--max-streams N] [--result R.json] [--dump DIR]
"""

import argparse
import json
import os
import socket
import struct
import sys
import threading

import zstandard

import pvwire as w


class Migration:
    def __init__(self, args):
        self.args = args
        self.accept_caps = w.parse_caps(args.accept)
        self.memory = {}          # page_index -> bytes (absent: zero)
        self.pages = 0
        self.lock = threading.Lock()
        self.seen = {"zstd_frames": 0, "plain_frames": 0, "zero": 0, "raw": 0, "delta": 0}
        self.by_round = {}        # round -> [pages, bytes] actually received on all streams
        self.reported = {}        # round -> (pages, bytes) from ROUND frames
        self.pings = 0            # PINGs answered (capability PING, §3.2)
        self.pong_works = 0       # of them with PONG_WORK (capability COMMIT_WORK)
        self.balloon = None       # the map from BALLOON frames (BALLOON_MAP with PV_STATE, §3.2.1)
        self.balloon_frames = 0
        self.balloon_final = False

    # Frames on any stream until STREAM_END (§3.4). `index` is the stream's index.
    def drain(self, ch, index, control):
        dctx = zstandard.ZstdDecompressor()
        while True:
            before = ch.received
            t, flags, p = ch.receive()
            if t == w.PAGES:
                rnd, entries = w.batch_decode(flags, p, self.pages, self.granted & w.CAP_ZSTD,
                                              self.granted & w.CAP_DELTA, dctx)
                with self.lock:
                    self.seen["zstd_frames" if flags & w.FLAG_ZSTD else "plain_frames"] += 1
                    r = self.by_round.setdefault(rnd, [0, 0])
                    r[0] += len(entries)
                    r[1] += 16 + len(p)
                for i, enc, data, tokens in entries:
                    if i % self.streams != index:
                        raise w.ProtocolError(f"page {i} on stream {index} of {self.streams} (must be {i % self.streams})")
                    if enc == w.ENC_ZERO:
                        self.memory.pop(i, None)
                        self.seen["zero"] += 1
                    elif enc == w.ENC_RAW:
                        self.memory[i] = data
                        self.seen["raw"] += 1
                    else:
                        self.memory[i] = w.delta_apply(self.memory.get(i, w.ZERO_PAGE), data, tokens)
                        self.seen["delta"] += 1
            elif t == w.ROUND and control:
                rnd, zero, pages, nbytes = struct.unpack("<IIQQ", w.expect((t, flags, p), w.ROUND, 24))
                if zero or rnd in self.reported:
                    raise w.ProtocolError(f"ROUND {rnd} repeated or with reserved bytes set")
                self.reported[rnd] = (pages, nbytes)
            elif t == w.PING and control and self.granted & w.CAP_PING:
                nonce = w.expect((t, flags, p), w.PING, 8)
                if self.granted & w.CAP_COMMIT_WORK:
                    # The nonce and this peer's own commit work in µs: 0, "not known" (§3.2). Its
                    # real work, a digest over the memory in Python, takes longer than the cases'
                    # downtime target: reported, it would keep pvmigrate from ever stopping.
                    ch.send(w.PONG_WORK, nonce + struct.pack("<II", 0, 0))
                    self.pong_works += 1
                else:
                    ch.send(w.PONG, nonce)  # the nonce, echoed at once
                self.pings += 1
            elif t == w.BALLOON and control and self.balloon is not None:
                if self.balloon_final:
                    raise w.ProtocolError("a BALLOON frame after the final one")
                self.balloon_final = w.balloon_apply(self.balloon, p, self.pages)
                self.balloon_frames += 1
            elif t == w.STREAM_END:
                (n,) = struct.unpack("<Q", w.expect((t, flags, p), w.STREAM_END, 8))
                if n != before:
                    raise w.ProtocolError(f"STREAM_END says {n} frames, {before} arrived on stream {index}")
                return
            else:
                raise w.ProtocolError(f"{w.NAMES[t]} on stream {index} while receiving pages")

    def run(self, listener, ctx):
        def accept():
            sock, _ = listener.accept()
            if ctx:
                sock = ctx.wrap_socket(sock, server_side=True)
            return w.Channel(sock, self.args.timeout)

        control = accept()
        channels = [control]
        try:
            # Handshake (§3.2): the first frame tells control (HELLO) from data (JOIN).
            hp = w.expect(control.receive(), w.HELLO, 32)
            mn, mx, streams, offered = struct.unpack_from("<HHIQ", hp)
            mid = self.mid = hp[16:32]
            self.hello = (mn, mx, streams, offered)
            if not (mn <= w.VERSION <= mx):
                raise w.ProtocolError(f"source speaks versions {mn}-{mx}; this receiver speaks {w.VERSION}", w.E_VERSION)
            self.streams = min(streams, self.args.max_streams)
            self.granted = offered & self.accept_caps & w.CAPS_ALL
            control.send(w.HELLO_ACK, struct.pack("<HHIQ", w.VERSION, 0, self.streams, self.granted))
            self.machine = w.parse_machine(w.expect(control.receive(), w.MACHINE))
            self.pages = w.page_count(self.machine["memory_bytes"])
            if self.granted & w.CAP_BALLOON_MAP and self.granted & w.CAP_PV_STATE:
                self.balloon = [0] * ((self.pages + 63) // 64)
            data = {}
            while len(data) < self.streams - 1:
                ch = accept()
                channels.append(ch)
                p = w.expect(ch.receive(), w.JOIN, 20)
                (idx,) = struct.unpack_from("<I", p, 16)
                if p[:16] != mid or not 1 <= idx < self.streams or idx in data:
                    raise w.ProtocolError(f"JOIN for stream {idx} of {self.streams}")
                data[idx] = ch  # JOIN gets no reply
            errors = []

            def drain_data(idx, ch):
                try:
                    self.drain(ch, idx, False)
                except Exception as e:  # reported by the main thread
                    errors.append(e)
                    control.close()

            threads = [threading.Thread(target=drain_data, args=(i, c)) for i, c in data.items()]
            for t in threads:
                t.start()
            try:
                self.drain(control, 0, True)
            except Exception:
                for c in data.values():
                    c.close()
                for t in threads:
                    t.join()
                raise errors[0] if errors else sys.exc_info()[1]
            # STATE is acted on only after STREAM_END on every stream (§3.4).
            for t in threads:
                t.join()
            if errors:
                raise errors[0]
            self.check_rounds()
            return self.commit(control)
        except w.PeerError:
            raise
        except w.ProtocolError as e:
            control.send_error(e.code, str(e))
            raise
        finally:
            for c in channels:
                c.close()

    def check_rounds(self):
        """ROUND's pages and bytes are the PAGES entries and frame bytes of that round on all
        streams (§3.2); every round that carried pages was reported; rounds are 0, 1, … without gaps."""
        if sorted(self.reported) != list(range(len(self.reported))) or not self.reported:
            raise w.ProtocolError(f"ROUND numbers {sorted(self.reported)} are not 0, 1, … without gaps")
        for rnd, (pages, nbytes) in self.by_round.items():
            if self.reported.get(rnd) != (pages, nbytes):
                raise w.ProtocolError(f"round {rnd}: received {pages} pages in {nbytes} bytes, ROUND said {self.reported.get(rnd)}")

    # --- The commit protocol (§3.6): STATE, COMMIT → PREPARED ← GO → DONE ←. This receiver
    # never runs the guest: "starting" it is answering DONE, after which the VM is its own.
    def commit(self, control):
        state = w.expect(control.receive(), w.STATE)
        expected, pages_with_data, expected_state = struct.unpack("<QQQ", w.expect(control.receive(), w.COMMIT, 24))
        if w.state_digest(state) != expected_state:
            control.send_error(w.E_DIGEST, f"STATE digest {w.state_digest(state):016x}, COMMIT says {expected_state:016x}")
            return {"ok": False, "error": "STATE digest mismatch"}, state
        sections = w.state_sections(state)
        if 4 in sections and not self.granted & w.CAP_PV_STATE:
            raise w.ProtocolError("STATE has a PV section although PV_STATE was not granted")
        if (7 in sections) != self.machine["nic"]:
            raise w.ProtocolError("STATE's NIC section (tag 7) does not match MACHINE flags bit 1")
        if self.balloon is not None:  # §3.2.1: the map came in BALLOON frames, the last one final
            if not self.balloon_final:
                raise w.ProtocolError("STATE before the final BALLOON frame")
            if 4 in sections and len(sections[4]) != 16:
                raise w.ProtocolError("STATE's PV section carries a balloon map although BALLOON_MAP was granted")
            if 4 not in sections and any(self.balloon):
                raise w.ProtocolError("BALLOON frames ballooned pages, but STATE has no PV section")
            state = w.pv_with_map(state, self.balloon)  # as a STATE without BALLOON_MAP has it (the dump)
            sections = w.state_sections(state)
        ballooned = w.balloon_pages(sections, self.pages)
        for i in ballooned:
            self.memory.pop(i, None)
        digest, n = w.digest(self.memory)
        result = {"ok": digest == expected and n == pages_with_data, "digest": f"{digest:016x}",
                  "commit_digest": f"{expected:016x}", "pages_with_data": n,
                  "commit_pages_with_data": pages_with_data, "granted": w.caps_text(self.granted),
                  "offered": w.caps_text(self.hello[3]), "streams": self.streams, "asked_streams": self.hello[2],
                  "rounds": len(self.reported), "ballooned": len(ballooned), "name": self.machine["name"], "pings": self.pings, "pong_works": self.pong_works,
                  "balloon_frames": self.balloon_frames, **self.seen}
        if not result["ok"]:
            control.send_error(w.E_DIGEST, f"digest {digest:016x} ({n} pages), COMMIT says {expected:016x} ({pages_with_data})")
            return result, state
        # Prepared: both digests match. The source must answer GO with this migration's id.
        control.send(w.PREPARED, self.mid)
        go = w.expect(control.receive(), w.GO, 16)
        if go != self.mid:
            raise w.ProtocolError("GO names another migration")
        control.send(w.DONE, self.mid)
        return result, state

    def dump(self, directory, state):
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "pages.bin"), "wb") as f:
            for i in sorted(self.memory):
                if self.memory[i] != w.ZERO_PAGE:
                    f.write(struct.pack("<Q", i) + self.memory[i])
        with open(os.path.join(directory, "state.bin"), "wb") as f:
            f.write(state)
        with open(os.path.join(directory, "machine.json"), "w") as f:
            json.dump(self.machine, f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port-file", required=True, help="where to write the port it listens on")
    ap.add_argument("--tls-dir")
    ap.add_argument("--insecure", action="store_true")
    ap.add_argument("--accept", default="zstd,delta,pv-state")
    ap.add_argument("--max-streams", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=30)
    ap.add_argument("--result")
    ap.add_argument("--dump")
    args = ap.parse_args()
    if bool(args.tls_dir) == args.insecure:
        ap.error("give exactly one of --tls-dir and --insecure")
    ctx = w.tls_context(args.tls_dir, server=True) if args.tls_dir else None
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(args.timeout)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(listener.getsockname()[1]))
    os.rename(tmp, args.port_file)
    m = Migration(args)
    try:
        result, state = m.run(listener, ctx)
    except (w.ProtocolError, w.PeerError, OSError) as e:
        result, state = {"ok": False, "error": str(e)}, None
    if args.dump and result["ok"]:
        m.dump(args.dump, state)
    text = json.dumps(result, sort_keys=True)
    if args.result:
        with open(args.result, "w") as f:
            f.write(text)
    print(text)
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
