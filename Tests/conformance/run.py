#!/usr/bin/env python3
"""The conformance run: the Python peer (receiver.py, sender.py — written from
docs/protocol.md alone) against the built pvmigrate binary, in both directions.

Each case is one chain on this machine, over loopback:

  pvmigrate run (a real guest, dirtying and stamping memory)
    --pvmigrate send-->  receiver.py  (grants some capabilities, maybe fewer streams;
                                       checks every frame, the ROUND accounting and
                                       its own digest of the memory it built == COMMIT's)
  receiver.py's image --sender.py-->  pvmigrate listen (round 0 wrong copies, round 1
                                       deltas or raw, round 2 no-op deltas; uses only
                                       what HELLO_ACK granted)
  pvmigrate selfcheck on the destination: the guest itself verifies every page it wrote.

So the guest that ends up running went through both Python halves: the Swift sender had to
produce a stream the Python receiver accepts and whose digest matches, and the Python sender
one that the Swift listener accepts, digests to the same value and that yields a guest whose
own check finds no bad page. Cases cover ZSTD/DELTA on/off in both directions, stream
counts lowered by either receiver, plaintext and mutual TLS, and a PV_STATE decline (the
Swift source must refuse and keep the VM). receiver-rejects shows the Python receiver's
checks can fail: sender.py --violate (ignoring the grant — issue 10's bug —, a page on the
wrong stream, a bad delta, a wrong STREAM_END count) must each be refused. Then the golden capture: sender.py --golden must
reproduce Tests/conformance/golden/stream-v2.bin byte for byte (the Swift encoder is checked
against the same file by MigrateTests' ConformanceGoldenTests).

    run.py [--binary .build/debug/pvmigrate]      exit status 0 only if every case passed
"""

import argparse
import struct
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "golden", "stream-v2.bin")
# The PV NIC's machine-state section (§1.8 "net", §5.8); CoreTests' NetStateTests checks the
# Swift encoder against the same bytes.
NET_GOLDEN = os.path.join(HERE, "golden", "net-section.bin")

# (name, tls, send --streams, receiver.py --accept, receiver.py --max-streams,
#  sender.py --offer, sender.py --streams, destination listener)
CASES = [
    ("plain-none", False, 2, "pv-state", 64, "zstd,delta,pv-state", 2, "default"),
    ("tls-zstd-lowered", True, 3, "zstd,pv-state,ping", 1, "zstd,pv-state,ping", 1, "default"),
    ("plain-delta-lowered", False, 3, "delta,pv-state,ping", 2, "delta,pv-state,ping,commit-work,balloon-map", 3, "default"),
    ("tls-all", True, 2, "zstd,delta,pv-state,ping,commit-work,balloon-map", 64,
     "zstd,delta,pv-state,ping,commit-work,balloon-map", 3, "restricted"),
    ("plain-balloon-map", False, 2, "pv-state,balloon-map", 64, "pv-state,balloon-map", 2, "default"),
    ("plain-all-one", False, 2, "zstd,delta,pv-state", 1, "pv-state", 1, "default"),
    ("tls-none-lowered", True, 4, "pv-state", 3, "zstd,delta,pv-state", 4, "default"),
]
# The restricted destination grants at most 2 streams and no ZSTD.
RESTRICTED = ["--max-streams", "2", "--accept", "delta,pv-state"]
DEADLINE = 30.0


class Failure(Exception):
    pass


class Run:
    def __init__(self, binary, root):
        self.binary, self.root = binary, root
        self.procs = []
        self.logs = {}

    def env(self, host):
        e = dict(os.environ)
        e["PVMIGRATE_RUNTIME_DIR"] = os.path.join(self.root, host)
        return e

    def pv(self, host, *args, check=True, timeout=60):
        r = subprocess.run([self.binary, *args], env=self.env(host), capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise Failure(f"pvmigrate {' '.join(args)} on {host} exited {r.returncode}: {r.stdout}{r.stderr}")
        return r

    def background(self, argv, env=None, **kw):
        p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
        self.procs.append(p)
        return p

    def listen(self, host, tls, extra=()):
        """Starts `pvmigrate listen` on a free loopback port; its log goes to <root>/<host>.log."""
        args = [self.binary, "listen", "--address", "127.0.0.1:0"]
        args += ["--tls-dir", os.path.join(self.root, "pki", "dst")] if tls else ["--insecure"]
        log = os.path.join(self.root, host + ".log")
        with open(log, "w") as out:
            p = subprocess.Popen(args + list(extra), env=self.env(host), stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(p)
        self.logs[host] = log
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline and p.poll() is None:
            with open(log) as f:
                for line in f:
                    if "listening on 127.0.0.1:" in line:
                        return int(line.split("listening on 127.0.0.1:")[1].split()[0].rstrip(";"))
            time.sleep(0.02)  # polling the log for the line listen prints once it listens
        raise Failure(f"pvmigrate listen ({host}) did not say 'listening on 127.0.0.1:PORT': {self.log_tail(host)}")

    def log_tail(self, host):
        with open(self.logs[host]) as f:
            return f.read()[-800:]

    def receiver(self, case_dir, tls, accept, max_streams):
        port_file = os.path.join(case_dir, "port")
        args = [sys.executable, os.path.join(HERE, "receiver.py"), "--port-file", port_file,
                "--accept", accept, "--max-streams", str(max_streams),
                "--result", os.path.join(case_dir, "result.json"), "--dump", os.path.join(case_dir, "image")]
        args += ["--tls-dir", os.path.join(self.root, "pki", "py")] if tls else ["--insecure"]
        p = self.background(args)
        deadline = time.monotonic() + DEADLINE
        while not os.path.exists(port_file):
            if p.poll() is not None or time.monotonic() > deadline:
                raise Failure(f"receiver.py did not start: {p.stdout.read()}")
            time.sleep(0.01)  # polling for the port file the receiver writes when it listens
        with open(port_file) as f:
            return p, int(f.read())

    def wait_status(self, host, name):
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            r = self.pv(host, "status", name, "--json", check=False)
            if r.returncode == 0:
                return json.loads(r.stdout)
            time.sleep(0.05)  # polling the destination for the arrived VM's control socket
        raise Failure(f"VM {name} did not appear on {host} within {DEADLINE} s")

    def source_vm(self, name):
        self.pv("src", "run", "--name", name, "--detach", "--memory", "64M",
                "--cmdline", "workload=dirty mib=8 passes=0 pattern=random change=512 rate=2000 progress=0")

    def case(self, spec, ports):
        name, tls, send_streams, accept, max_streams, offer, py_streams, dest = spec
        case_dir = os.path.join(self.root, name)
        os.makedirs(case_dir)
        vm = "vm-" + name
        self.source_vm(vm)
        rx, rx_port = self.receiver(case_dir, tls, accept, max_streams)
        # A Python receiver is far slower than pvmigrate: a looser downtime target lets the
        # migration converge in a few rounds (still several, with deltas) on a busy machine.
        send = ["send", f"127.0.0.1:{rx_port}", vm, "--streams", str(send_streams), "--json", "--downtime-ms", "300"]
        send += ["--tls-dir", os.path.join(self.root, "pki", "src")] if tls else ["--insecure"]
        s = self.pv("src", *send, check=False, timeout=DEADLINE * 6)
        out, _ = rx.communicate(timeout=DEADLINE)
        if s.returncode != 0 or rx.returncode != 0:
            raise Failure(f"pvmigrate send → receiver.py: send exited {s.returncode} ({s.stderr.strip()[-300:]}); "
                          f"receiver: {out.strip()[-600:]}")
        res = json.loads(out.strip().splitlines()[-1])
        granted = set(accept.split(","))
        checks = [(res["streams"] == min(send_streams, max_streams), f"streams {res['streams']}"),
                  ("zstd" in granted or res["zstd_frames"] == 0, f"{res['zstd_frames']} zstd frames, ZSTD not granted"),
                  ("delta" in granted or res["delta"] == 0, f"{res['delta']} deltas, DELTA not granted"),
                  (("ping" in granted) == (res["pings"] > 0), f"{res['pings']} PINGs answered, PING granted: {'ping' in granted}"),
                  (res["pong_works"] == (res["pings"] if "commit-work" in granted else 0),
                   f"{res['pong_works']} of {res['pings']} PINGs answered with PONG_WORK, COMMIT_WORK granted: {'commit-work' in granted}"),
                  (("balloon-map" in granted) == (res["balloon_frames"] > 0),
                   f"{res['balloon_frames']} BALLOON frames, BALLOON_MAP granted: {'balloon-map' in granted}"),
                  (res["rounds"] >= 1 and res["pages_with_data"] > 0, "no rounds or no pages")]
        for ok, why in checks:
            if not ok:
                raise Failure(f"pvmigrate → receiver.py: {why}: {res}")
        # The relay: sender.py → pvmigrate listen, then the guest's own self-check.
        dst_host, port = ("dst-tls" if tls else "dst-plain", ports["tls" if tls else "plain"])
        if dest == "restricted":
            dst_host, port = "dst-restricted", ports["restricted"]
        args = [sys.executable, os.path.join(HERE, "sender.py"), "--to", f"127.0.0.1:{port}",
                "--image", os.path.join(case_dir, "image"), "--offer", offer, "--streams", str(py_streams)]
        args += ["--tls-dir", os.path.join(self.root, "pki", "py")] if tls else ["--insecure"]
        r = subprocess.run(args, capture_output=True, text=True, timeout=DEADLINE * 2)
        if r.returncode != 0:
            raise Failure(f"sender.py → pvmigrate listen exited {r.returncode}: {r.stdout}{r.stderr[-400:]}; listen: {self.log_tail(dst_host)}")
        sent = json.loads(r.stdout.strip().splitlines()[-1])
        if sent["digest"] != res["digest"]:
            raise Failure(f"sender.py's digest {sent['digest']} != receiver.py's {res['digest']}")
        # pvmigrate's PONG_WORK reports its rehearsed work: a thread start at least before DONE.
        if ("commit-work" in sent["granted"].split(",")) != bool(sent["commit_work"]) \
                or any(start == 0 for _, start in sent["commit_work"]):
            raise Failure(f"sender.py: granted {sent['granted']}, PONG_WORK answers {sent['commit_work']}")
        self.wait_status(dst_host, vm)
        check = self.pv(dst_host, "selfcheck", vm, "--json")
        verdict = json.loads(check.stdout)
        if verdict.get("bad", 1) != 0 or verdict.get("pages", 0) == 0:
            raise Failure(f"selfcheck on the destination: {check.stdout}")
        self.pv(dst_host, "stop", vm, check=False)
        return (f"send→py: {res['streams']}/{send_streams} streams, granted {res['granted']}, "
                f"{res['zstd_frames']} zstd frames, {res['delta']} deltas, digest ok; "
                f"py→listen: {sent['streams']}/{py_streams} streams, granted {sent['granted']}; "
                f"guest selfcheck {verdict['pages']} pages, 0 bad")

    def declined_pv_state(self, ports):
        """A receiver that declines PV_STATE: the Swift source refuses (the guest uses the PV
        interface) and the VM keeps running at the source."""
        case_dir = os.path.join(self.root, "no-pv-state")
        os.makedirs(case_dir)
        vm = "vm-no-pv-state"
        self.source_vm(vm)
        rx, rx_port = self.receiver(case_dir, False, "zstd,delta", 64)
        s = self.pv("src", "send", f"127.0.0.1:{rx_port}", vm, "--insecure", check=False)
        rx.communicate(timeout=DEADLINE)
        if s.returncode == 0 or "PV_STATE" not in s.stderr:
            raise Failure(f"send to a receiver without PV_STATE: exit {s.returncode}, {s.stderr.strip()[-300:]}")
        st = self.pv("src", "status", vm, "--json")
        if '"running"' not in st.stdout:
            raise Failure(f"the VM is not running at the source after the refused migration: {st.stdout}")
        self.pv("src", "stop", vm, check=False)
        return "refused before memory; the VM keeps running at the source"

    def receiver_rejects(self):
        """The Python receiver's checks can fail: sender.py's deliberate violations (among them
        the bug of issue 10, encoding with capabilities that were not granted) must each be
        rejected with an ERROR that says why."""
        seen = []
        for violation, accept, expected in [("ignore-grant", "pv-state", "not granted"),
                                            ("wrong-stream", "zstd,delta,pv-state", "on stream 0"),
                                            ("bad-delta", "zstd,delta,pv-state", "empty literal"),
                                            ("stream-end", "zstd,delta,pv-state", "STREAM_END says")]:
            case_dir = os.path.join(self.root, "violate-" + violation)
            os.makedirs(case_dir)
            rx, port = self.receiver(case_dir, False, accept, 64)
            r = subprocess.run([sys.executable, os.path.join(HERE, "sender.py"), "--to", f"127.0.0.1:{port}",
                                "--synthetic", "--insecure", "--streams", "2", "--violate", violation],
                               capture_output=True, text=True, timeout=DEADLINE)
            out, _ = rx.communicate(timeout=DEADLINE)
            res = json.loads(out.strip().splitlines()[-1])
            if rx.returncode == 0 or r.returncode == 0 or expected not in res.get("error", ""):
                raise Failure(f"receiver.py did not reject '{violation}' (expected '{expected}'): "
                              f"receiver {res}, sender {r.stdout.strip()}")
            seen.append(violation)
        return "rejected " + ", ".join(seen)

    def golden(self):
        out = os.path.join(self.root, "golden.bin")
        subprocess.run([sys.executable, os.path.join(HERE, "sender.py"), "--golden", out], check=True, timeout=60)
        with open(out, "rb") as a, open(GOLDEN, "rb") as b:
            mine, theirs = a.read(), b.read()
        if mine != theirs:
            at = next((i for i, (x, y) in enumerate(zip(mine, theirs)) if x != y), min(len(mine), len(theirs)))
            raise Failure(f"sender.py --golden differs from {GOLDEN} at byte {at} ({len(mine)} vs {len(theirs)} bytes)")
        return f"{len(mine)} bytes identical to golden/stream-v2.bin"

    def nic_section(self):
        """The NIC section read from the spec alone: golden/net-section.bin decodes to the
        documented fields, a format-4 STATE carries it, and what §5.8 says a reader refuses
        is refused (a receiver needs no TAP for this: the bytes are the contract)."""
        sys.path.insert(0, HERE)
        import pvwire as w
        with open(NET_GOLDEN, "rb") as f:
            golden = f.read()
        got = w.net_section(golden, 2)
        want = {"mac": "52:54:00:12:34:56", "net_page": 0x300000, "tx_cons": 0x10002, "rx_prod": 0xfffffffe,
                "rx_vcpu": 1, "announce": 3, "tx_frames": 10, "tx_bytes": 1000, "rx_frames": 20, "rx_bytes": 2000,
                "rx_dropped": 5}
        if got != want:
            raise Failure(f"net-section.bin decodes to {got}")

        def container(version, sections):
            body = b"".join(struct.pack("<HHI", t, 0, len(p)) + p for t, p in sections)
            return b"PVMS" + struct.pack("<HH", version, len(sections)) + body

        vcpus = [(6, struct.pack("<I", 2)), (0x100, b"v0"), (0x101, b"v1")]
        w.state_sections(container(4, vcpus + [(7, golden)]))
        bad = {"format 3 with tag 7": lambda: w.state_sections(container(3, vcpus + [(7, golden)])),
               "rx_vcpu of a 1-vCPU VM": lambda: w.net_section(golden, 1),
               "multicast MAC": lambda: w.net_section(b"\x53" + golden[1:], 2),
               "reserved": lambda: w.net_section(golden[:6] + b"\x01\x00" + golden[8:], 2),
               "misaligned net page": lambda: w.net_section(golden[:8] + b"\x08" + golden[9:], 2),
               "71 bytes": lambda: w.net_section(golden[:71], 2)}
        for what, check in bad.items():
            try:
                check()
            except w.ProtocolError:
                continue
            raise Failure(f"pvwire accepted a NIC section with {what}")
        return f"{len(golden)} bytes as §1.8 says; refused: " + ", ".join(bad)

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
        for host in ("src", "dst-plain", "dst-tls", "dst-restricted"):
            if os.path.isdir(os.path.join(self.root, host)):
                r = self.pv(host, "ps", check=False)
                for line in r.stdout.splitlines()[1:]:
                    if line.split():
                        self.pv(host, "stop", line.split()[0], check=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(HERE, "..", "..", ".build", "debug", "pvmigrate"))
    ap.add_argument("--only", help="run only cases whose name contains this")
    args = ap.parse_args()
    binary = os.path.abspath(args.binary)
    if not os.access(binary, os.X_OK):
        sys.exit(f"conformance: no pvmigrate binary at {binary}: build it (swift build) or pass --binary")
    try:
        import zstandard  # noqa: F401
    except ImportError:
        sys.exit("conformance: the Python package zstandard is missing: run scripts/setup.sh (pip install zstandard)")
    root = tempfile.mkdtemp(prefix="pvmigrate-conformance-")
    run = Run(binary, root)
    started, failed = time.monotonic(), 0
    try:
        subprocess.run([binary, "certs", "init", "--dir", os.path.join(root, "pki"), "--hosts", "src", "dst=127.0.0.1", "py=127.0.0.1"],
                       check=True, capture_output=True, timeout=60)
        tests = [("golden", run.golden), ("nic-section", run.nic_section), ("receiver-rejects", run.receiver_rejects)]
        ports = {"plain": run.listen("dst-plain", False), "tls": run.listen("dst-tls", True),
                 "restricted": run.listen("dst-restricted", True, RESTRICTED)}
        tests += [(c[0], (lambda c=c: run.case(c, ports))) for c in CASES]
        tests.append(("no-pv-state", lambda: run.declined_pv_state(ports)))
        for name, test in tests:
            if args.only and args.only not in name:
                continue
            t0 = time.monotonic()
            try:
                detail = test()
                print(f"conformance: ok   {name} ({time.monotonic() - t0:.1f} s): {detail}", flush=True)
            except (Failure, subprocess.SubprocessError, OSError, ValueError, KeyError) as e:
                failed += 1
                print(f"conformance: FAIL {name} ({time.monotonic() - t0:.1f} s): {e}", flush=True)
    finally:
        run.close()
        shutil.rmtree(root, ignore_errors=True)
    print(f"conformance: {'FAILED' if failed else 'passed'}: {failed} failed, {time.monotonic() - started:.1f} s")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
