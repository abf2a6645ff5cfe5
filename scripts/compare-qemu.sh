#!/usr/bin/env bash
# Side-by-side: the same live-migration cases with QEMU and with pvmigrate, on this machine,
# over loopback, and the ratios QEMU / pvmigrate for total time, downtime and bytes.
#
# Cases (the names `pvmigrate bench --list` shows; guests of 1 GiB running the built-in guest):
#   idle-1g             the guest idles
#   dirty-64mibps       it dirties 64 MiB/s over a 256 MiB working set
#   dirty-max           it dirties as fast as it can over 512 MiB
#   dirty-max-128mibps  the same behind a 128 MiB/s link (bandwidth cap on both)
#
# QEMU: two qemu-system-x86_64 processes (-enable-kvm -cpu host,-arch-capabilities -m 1G,
# the exported guest as -kernel, the workload as -append), the destination started with
# `-incoming defer`, driven over QMP on Unix sockets: downtime-limit 50 ms (pvmigrate's
# default target), max-bandwidth unlimited or the cap, TLS with the certificates of
# `pvmigrate certs init` (tls-creds-x509, verify-peer: mutual, like pvmigrate) — or plaintext if
# QEMU cannot use them, which the output then says — and `query-migrate` for the results.
# pvmigrate: `pvmigrate bench --cases …` (both ends in one process, real mutual TLS, loopback).
#
# Caveat, printed with the results: QEMU's guest has no PV interface, so on a PVM host (the
# development machines, platform-facts.md) it runs EMULATED, ~3,000x slower, and dirties far
# less memory than the same workload under pvmigrate. The dirtying cases are therefore much
# easier for QEMU here; on hardware-KVM hosts they would be comparable.
#
# Like-for-like cases (emulated-idle, emulated-dirty): both VMMs run the SAME exported guest in the
# SAME mode — emulated in both (pvmigrate with the PVM flag withheld, like `run --no-native`; QEMU
# on the same /dev/kvm, where a guest that is not PVM-aware is emulated anyway) — with the same
# fill and the same fixed dirty rate, so the engines are compared, not the guests. For them the
# script also reports MB/s on the wire and CPU-seconds: pvmigrate's from its per-thread meters,
# QEMU's from /proc (utime + stime) of the source and destination processes over the migration,
# without their vCPU threads ("CPU n/KVM", /proc/<pid>/task/*/stat), since pvmigrate's exclude the vCPU too.
#
# Bulk case (bulk-1g): CPU-seconds per GiB when there is a lot to move. QEMU runs it twice per
# run: with its defaults (one stream, no compression) and with its fastest bulk configuration,
# multifd + zstd on 2 channels (the `multifd` capability and `multifd-channels`/`multifd-compression`
# set on both ends over QMP before the migration; with TLS, every channel uses the same
# tls-creds-x509 object). The emulated guest cannot
# write 1 GiB in useful time, so neither guest writes it during the comparison: a native pvmigrate
# guest `fill`s 1 GiB of a 2 GiB guest once (mixed content) and is saved to a mapped snapshot
# (protocol.md §6); its memory section is cut out as a raw file. pvmigrate then `restore`s the
# snapshot (memory mapped privately from the file) and `send`s it to a `listen` (two processes,
# mutual TLS, its defaults); QEMU boots the same exported guest (`workload=idle`, emulated) with
# `-object memory-backend-file,mem-path=RAW,share=off` — the same bytes, also mapped privately from
# a file (QEMU 7.2 has no `offset=`, hence the copy) — and migrates it with TLS to a QEMU with a
# `memory-backend-ram` of the same id. Both move the same 1 GiB of data pages from the page cache.
# CPU-seconds: pvmigrate's per-thread meters (`send --json`, the listener's `arrived` record); QEMU's
# non-vCPU threads as above (the process's total minus its vCPU threads', so that threads which ended
# — multifd's channels — still count). Per GiB = per GiB of pages with data moved (QEMU: `normal` pages).
#
# Usage: scripts/compare-qemu.sh
# Environment: RUNS (runs per case and VMM, median shown; default 1), CASES (default: the four
#              QEMU cases, the two like-for-like ones and bulk-1g),
#              CASE_TIMEOUT (seconds per QEMU migration, default 180), KEEP=1 (keep the work dir),
#              PVMIGRATE (a pvmigrate binary to use instead of building one),
#              SWIFTPM_FLAGS (extra flags for `swift build`, e.g. "--scratch-path .build-ci").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v swift >/dev/null 2>&1 && [ -x /opt/swift/usr/bin/swift ]; then
    export PATH="/opt/swift/usr/bin:$PATH"
fi
RUNS=${RUNS:-1}
CASES=${CASES:-"idle-1g dirty-64mibps dirty-max dirty-max-128mibps emulated-idle emulated-dirty bulk-1g"}
CASE_TIMEOUT=${CASE_TIMEOUT:-180}

say() { echo "compare-qemu: $*" >&2; }
fail() { echo "compare-qemu: FAIL: $*" >&2; exit 1; }

if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
    say "installing qemu-system-x86"
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-system-x86 >&2 \
        || fail "could not install qemu-system-x86"
fi
command -v python3 >/dev/null 2>&1 || fail "python3 is needed to drive QEMU over QMP"
[ -r /dev/kvm ] && [ -w /dev/kvm ] || fail "/dev/kvm is not usable: both VMMs need KVM"

if [ -n "${PVMIGRATE:-}" ]; then
    bin=$PVMIGRATE
    [ -x "$bin" ] || fail "PVMIGRATE=$bin is not an executable"
else
    read -r -a swiftpm_flags <<<"${SWIFTPM_FLAGS:-}"
    say "building pvmigrate (release)"
    swift build -c release "${swiftpm_flags[@]}" --product pvmigrate >&2
    bin=$(swift build -c release "${swiftpm_flags[@]}" --show-bin-path)/pvmigrate
fi

WORK=$(mktemp -d /tmp/pvmigrate-compare-XXXXXX)
cleanup() {
    # The driver kills its QEMU processes itself; this catches anything left after a crash.
    for pidfile in "$WORK"/*.pid; do
        [ -f "$pidfile" ] && kill -9 "$(cat "$pidfile")" 2>/dev/null || true
    done
    # bulk-1g's pvmigrate VMs and listener, if a run was interrupted.
    for sock in "$WORK"/rt-bulk/*/vms/*.sock; do
        [ -S "$sock" ] || continue
        PVMIGRATE_RUNTIME_DIR=${sock%/vms/*} "$bin" stop "$(basename "$sock" .sock)" >/dev/null 2>&1 || true
    done
    [ -n "${listen_pid:-}" ] && kill "$listen_pid" 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$bin" guest export "$WORK/pvguest.elf" >&2
# dst's certificate names the address both QEMU and pvmigrate dial (they check it).
"$bin" certs init --dir "$WORK/pki" --hosts src dst=127.0.0.1 >/dev/null
"$bin" bench --list > "$WORK/cases.tsv"
BENCH_CASES=""
for c in $CASES; do
    [ "$c" = bulk-1g ] && continue
    grep -q "^$c	" "$WORK/cases.tsv" || fail "unknown case $c (see: pvmigrate bench --list, or bulk-1g)"
    BENCH_CASES="$BENCH_CASES $c"
done

# bulk-1g, pvmigrate's side: fill once, save, cut out the raw memory for QEMU, then RUNS migrations
# of the restored snapshot between two processes. Results: one JSON line per run in bulk.jsonl.
bulk_pvmigrate() {
    local rt=$WORK/rt-bulk pki=$WORK/pki out=$WORK/bulk.jsonl run port vm
    mkdir -p "$rt/src" "$rt/dst"
    : > "$out"
    PVMIGRATE_RUNTIME_DIR=$rt/src "$bin" run --name bulkfill --detach --memory 2G --cmdline "workload=idle fill=1024" >&2
    for _ in $(seq 1 600); do  # polling the console: the guest's only signal that the fill is done
        PVMIGRATE_RUNTIME_DIR=$rt/src "$bin" console bulkfill 2>/dev/null | grep -q "fill 1024 MiB done" && break
        sleep 1
    done
    PVMIGRATE_RUNTIME_DIR=$rt/src "$bin" save bulkfill "$WORK/bulk.pvsnap" --stop >/dev/null \
        || { say "bulk-1g: the fill guest could not be saved"; return 1; }
    # The memory section: offset 4096, 2 GiB (protocol.md §6.1, mapped layout); holes stay holes.
    dd if="$WORK/bulk.pvsnap" of="$WORK/bulk.raw" bs=4096 skip=1 count=524288 conv=sparse status=none
    for run in $(seq 1 "$RUNS"); do
        vm=bulk$run
        PVMIGRATE_RUNTIME_DIR=$rt/dst "$bin" listen --address 127.0.0.1:0 --tls-dir "$pki/dst" --json \
            > "$WORK/bulk-listen-$run.log" 2>&1 &
        listen_pid=$!
        port=""
        for _ in $(seq 1 100); do
            port=$(grep -o '"address":"127.0.0.1:[0-9]*"' "$WORK/bulk-listen-$run.log" | head -1 | grep -o '[0-9]*"$' | tr -d '"') || true
            [ -n "$port" ] && break
            sleep 0.1
        done
        PVMIGRATE_RUNTIME_DIR=$rt/src "$bin" restore "$WORK/bulk.pvsnap" --name "$vm" --detach >&2
        PVMIGRATE_RUNTIME_DIR=$rt/src "$bin" send "127.0.0.1:$port" "$vm" --tls-dir "$pki/src" --json \
            > "$WORK/bulk-send-$run.json" || say "bulk-1g: pvmigrate run $run failed"
        for _ in $(seq 1 100); do grep -q '"event":"arrived"' "$WORK/bulk-listen-$run.log" && break; sleep 0.1; done
        python3 - "$WORK/bulk-send-$run.json" "$WORK/bulk-listen-$run.log" >> "$out" <<'PY' || true
import json, sys
stats = json.load(open(sys.argv[1]))
stats = stats.get("stats", stats)
arrived = next(json.loads(l) for l in open(sys.argv[2]) if '"event":"arrived"' in l)
print(json.dumps({"total": stats["totalSeconds"], "downtime": stats["downtimeSeconds"], "bytes": stats["wireBytes"],
                  "pages": stats["rawPages"] + stats["deltaPages"], "cpu_src": stats["cpuSeconds"],
                  "cpu_dst": float(arrived["cpu_s"])}))
PY
        PVMIGRATE_RUNTIME_DIR=$rt/dst "$bin" stop "$vm" >/dev/null 2>&1 || true
        PVMIGRATE_RUNTIME_DIR=$rt/src "$bin" stop "$vm" >/dev/null 2>&1 || true  # a failed send left it here
        kill "$listen_pid" 2>/dev/null || true
        wait "$listen_pid" 2>/dev/null || true
    done
}

if [ -n "$BENCH_CASES" ]; then
    say "pvmigrate:$BENCH_CASES ($RUNS run(s) each)"
    # shellcheck disable=SC2086
    "$bin" bench --cases $BENCH_CASES --runs "$RUNS" --json "$WORK/pvmigrate.json" >&2 \
        || say "some pvmigrate runs failed (see above); comparing what succeeded"
else
    echo "[]" > "$WORK/pvmigrate.json"
fi
if [[ " $CASES " == *" bulk-1g "* ]]; then
    say "pvmigrate: bulk-1g ($RUNS run(s): fill, save, restore + send to listen)"
    bulk_pvmigrate || say "bulk-1g: pvmigrate's side failed"
fi

say "QEMU: $CASES ($RUNS run(s) each; the guest runs emulated under QEMU on a PVM host: slow to boot)"
timeout $(( (CASE_TIMEOUT + 120) * RUNS * $(wc -w <<<"$CASES") + 300 )) \
    python3 - "$WORK" "$RUNS" "$CASE_TIMEOUT" "$CASES" <<'PY'
import json, os, re, signal, socket, statistics, subprocess, sys, time

work, runs, case_timeout, wanted = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4].split()
cases = {}
for line in open(os.path.join(work, "cases.tsv")):
    name, memory, bandwidth, cmdline = line.rstrip("\n").split("\t")
    cases[name] = (int(memory), None if bandwidth == "-" else int(bandwidth), cmdline)
procs = []

def kill_all(*_):
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        try: p.wait(timeout=5)
        except Exception: pass
    procs.clear()

def on_signal(*_):
    kill_all()
    sys.exit(130)

signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)

def qemu_tls_dir(host, endpoint):
    """QEMU's tls-creds-x509 wants ca-cert.pem and {server,client}-{cert,key}.pem."""
    src, dst = os.path.join(work, "pki", host), os.path.join(work, f"qemu-tls-{host}")
    os.makedirs(dst, exist_ok=True)
    for ours, theirs in (("ca.pem", "ca-cert.pem"), ("cert.pem", f"{endpoint}-cert.pem"), ("key.pem", f"{endpoint}-key.pem")):
        target = os.path.join(dst, theirs)
        if not os.path.exists(target):
            os.symlink(os.path.join(src, ours), target)
    return dst

class QMP:
    def __init__(self, path, deadline=20):
        end = time.time() + deadline
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.time() > end: raise RuntimeError(f"QMP socket {path} never answered")
                time.sleep(0.05)
        self.sock.settimeout(30)
        self.buf = b""
        self.read()  # greeting
        self.cmd("qmp_capabilities")

    def read(self):
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data: raise RuntimeError("QMP connection closed")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def cmd(self, name, **args):
        self.sock.sendall(json.dumps({"execute": name, "arguments": args}).encode() + b"\n")
        while True:
            msg = self.read()
            if "event" in msg: continue
            if "error" in msg: raise RuntimeError(f"{name}: {msg['error'].get('desc')}")
            return msg.get("return")

def start_qemu(tag, memory, cmdline, extra, ram=None):
    """ram: None (QEMU's own RAM), "file" (bulk.raw mapped privately) or "ram" (a RAM backend of the same id)."""
    qmp_path = os.path.join(work, f"{tag}.qmp")
    log = os.path.join(work, f"{tag}.serial")
    if ram == "file":
        extra = ["-object", f"memory-backend-file,id=ram0,size={memory},mem-path={os.path.join(work, 'bulk.raw')},share=off",
                 "-machine", "pc,memory-backend=ram0"] + extra
    elif ram == "ram":
        extra = ["-object", f"memory-backend-ram,id=ram0,size={memory}", "-machine", "pc,memory-backend=ram0"] + extra
    args = ["qemu-system-x86_64", "-enable-kvm", "-cpu", "host,-arch-capabilities", "-m", f"{memory >> 20}M", "-smp", "1",
            "-nodefaults", "-display", "none", "-no-reboot", "-kernel", os.path.join(work, "pvguest.elf"),
            "-append", cmdline, "-serial", f"file:{log}", "-qmp", f"unix:{qmp_path},server=on,wait=off",
            "-pidfile", os.path.join(work, f"{tag}.pid")] + extra
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=open(os.path.join(work, f"{tag}.stderr"), "w"))
    procs.append(p)
    try:
        return p, QMP(qmp_path), log
    except Exception as e:
        err = open(os.path.join(work, f"{tag}.stderr")).read().strip()
        raise RuntimeError(f"QEMU ({tag}) did not start: {err or e}")

def wait_for(path, text, timeout):
    end = time.time() + timeout
    while time.time() < end:
        try:
            if text in open(path, errors="replace").read(): return True
        except FileNotFoundError: pass
        time.sleep(0.2)
    return False

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close(); return port

CLK_TCK = os.sysconf("SC_CLK_TCK")

def cpu_ticks(path):
    fields = open(path).read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat(5))

def engine_cpu(pid):
    """utime + stime (seconds) of a QEMU process without its vCPU threads ("CPU n/KVM"): the
    process's total — which keeps the time of threads that have ended, such as multifd's
    channel threads, joined when the migration completes — minus the vCPU threads' own."""
    total = cpu_ticks(f"/proc/{pid}/stat")
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            if "/KVM" in open(f"/proc/{pid}/task/{tid}/comm").read(): total -= cpu_ticks(f"/proc/{pid}/task/{tid}/stat")
        except OSError:
            continue  # the thread ended meanwhile
    return total / CLK_TCK

def guest_rate(path):
    """The guest's own last report of the pages it writes per second (0 if none yet)."""
    try: text = open(path, errors="replace").read()
    except FileNotFoundError: return 0
    rates = re.findall(r"pvguest: progress (\d+) pages/s", text)
    return int(rates[-1]) if rates else 0

def run_qemu_case(name, tls, multifd=False):
    """multifd: QEMU's fastest configuration for bulk transfer — the multifd capability with
    2 channels (pvmigrate's default stream count) and zstd compression (level 1, QEMU's default),
    set on both ends before the migration as QEMU documents (docs/devel/migration.rst, "Multifd")."""
    bulk = name == "bulk-1g"
    memory, bandwidth, cmdline = (2 << 30, None, "workload=idle") if bulk else cases[name]
    # The same workload, reporting its own speed once a second (the figure the caveat is about).
    cmdline = cmdline.replace("progress=0", "progress=1000")
    port = free_port()
    tls_dst = ["-object", f"tls-creds-x509,id=tls0,dir={qemu_tls_dir('dst', 'server')},endpoint=server,verify-peer=on"] if tls else []
    tls_src = ["-object", f"tls-creds-x509,id=tls0,dir={qemu_tls_dir('src', 'client')},endpoint=client"] if tls else []
    try:
        dst, dq, _ = start_qemu("dst", memory, cmdline, ["-incoming", "defer"] + tls_dst, "ram" if bulk else None)
        if tls: dq.cmd("migrate-set-parameters", **{"tls-creds": "tls0"})
        if multifd: set_multifd(dq)
        dq.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
        src, sq, serial = start_qemu("src", memory, cmdline, tls_src, "file" if bulk else None)
        # Let the (emulated) guest boot and start its workload before migrating.
        if not wait_for(serial, "pvguest: workload", 120):
            raise RuntimeError("the guest did not start its workload under QEMU within 120 s")
        if "fill=" in cmdline and not wait_for(serial, "pvguest: fill ", 600):
            raise RuntimeError("the guest did not finish its fill under QEMU within 600 s")
        if "workload=dirty" in cmdline:
            wait_for(serial, "pvguest: progress", 10)
        else:
            time.sleep(1.0)
        rate = guest_rate(serial)
        params = {"downtime-limit": 50, "max-bandwidth": bandwidth if bandwidth else 100 << 30}
        if tls: params.update({"tls-creds": "tls0", "tls-hostname": "dst"})
        sq.cmd("migrate-set-parameters", **params)
        if multifd: set_multifd(sq)
        cpu_src, cpu_dst = engine_cpu(src.pid), engine_cpu(dst.pid)
        sq.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
        end = time.time() + case_timeout
        while True:
            info = sq.cmd("query-migrate")
            status = info.get("status")
            if status == "completed":
                cpu_src, cpu_dst = engine_cpu(src.pid) - cpu_src, engine_cpu(dst.pid) - cpu_dst
                break
            if status in ("failed", "cancelled"):
                raise RuntimeError(f"QEMU migration {status}: {info.get('error-desc', 'no reason given')}")
            if time.time() > end:
                sq.cmd("migrate_cancel")
                raise RuntimeError(f"QEMU migration did not complete within {case_timeout:.0f} s (status {status})")
            time.sleep(0.05)
        # The destination runs the guest now.
        running = False
        for _ in range(50):
            if dq.cmd("query-status").get("status") == "running": running = True; break
            time.sleep(0.1)
        if not running: raise RuntimeError("the destination QEMU is not running the guest after the migration")
        ram = info.get("ram", {})
        return {"total": info["total-time"] / 1000, "downtime": info.get("downtime", 0) / 1000,
                "dirty": rate, "tls": tls,
                "pages": ram.get("normal", 0) + (0 if bulk else ram.get("duplicate", 0)), "cpu_src": cpu_src, "cpu_dst": cpu_dst,
                # QEMU 7.2 counts a multifd page as 4 KiB in `transferred` whatever zstd made of it
                # (and its sockets' sendmsg is not in /proc/<pid>/io): no wire figure then.
                "bytes": None if multifd else ram.get("transferred", 0)}
    finally:
        kill_all()

def set_multifd(q):
    q.cmd("migrate-set-capabilities", capabilities=[{"capability": "multifd", "state": True}])
    q.cmd("migrate-set-parameters", **{"multifd-channels": 2, "multifd-compression": "zstd"})

pv = {}
for r in json.load(open(os.path.join(work, "pvmigrate.json"))):
    if r.get("stats"):
        s = r["stats"]
        pv.setdefault(r["name"], []).append({"total": s["totalSeconds"], "downtime": s["downtimeSeconds"], "bytes": s["wireBytes"],
                                              "dirty": r.get("guestBaseline", 0),
                                              "pages": s["zeroPages"] + s["rawPages"] + s["deltaPages"],
                                              "cpu_src": s.get("cpuSeconds", 0),
                                              "cpu_dst": (r.get("receiver") or {}).get("cpuSeconds", 0)})

bulk_file = os.path.join(work, "bulk.jsonl")
if os.path.exists(bulk_file):
    pv["bulk-1g"] = [dict(json.loads(l), dirty=0) for l in open(bulk_file) if l.strip()]
if "bulk-1g" in wanted and not os.path.exists(os.path.join(work, "bulk.raw")):
    wanted = [n for n in wanted if n != "bulk-1g"]
    print("compare-qemu: bulk-1g skipped for QEMU: pvmigrate's side made no raw memory file", file=sys.stderr)

use_tls, qemu = True, {}
for name in wanted:
    for run in range(runs):
        print(f"compare-qemu: QEMU {name} run {run + 1} ({'TLS' if use_tls else 'plaintext'})…", file=sys.stderr, flush=True)
        try:
            qemu.setdefault(name, []).append(run_qemu_case(name, use_tls))
        except Exception as e:
            if use_tls and not qemu.get(name) and not any(qemu.values()):
                print(f"compare-qemu: QEMU with TLS failed ({e}); falling back to PLAINTEXT for QEMU", file=sys.stderr)
                use_tls = False
                try:
                    qemu.setdefault(name, []).append(run_qemu_case(name, False))
                    continue
                except Exception as e2:
                    e = e2
            print(f"compare-qemu: QEMU {name} run {run + 1} failed: {e}", file=sys.stderr)
        if name == "bulk-1g":  # and QEMU's best bulk configuration, run after the default one
            print(f"compare-qemu: QEMU bulk-1g multifd run {run + 1} ({'TLS' if use_tls else 'plaintext'})…", file=sys.stderr, flush=True)
            try:
                qemu.setdefault("bulk-1g multifd", []).append(run_qemu_case(name, use_tls, multifd=True))
            except Exception as e:
                print(f"compare-qemu: QEMU bulk-1g multifd run {run + 1} failed: {e}", file=sys.stderr)

def med(rows, key):
    return statistics.median(r[key] for r in rows) if rows else None

def fmt(v, kind):
    if v is None: return "failed"
    return {"total": f"{v:.2f} s", "downtime": f"{v * 1000:.1f} ms", "bytes": f"{v / 1048576:.1f} MiB",
            "dirty": f"{v:,.0f}"}[kind]

def ratio(q, p):
    if q is None or p is None or p <= 0: return "-"
    return f"{q / p:.2f}x"

print()
print(f"QEMU vs pvmigrate, loopback, {runs} run(s) per case (median); ratio = QEMU / pvmigrate (> 1: pvmigrate is better)")
print("| case | total QEMU | total pvmigrate | ratio | downtime QEMU | downtime pvmigrate | ratio | bytes QEMU | bytes pvmigrate | ratio "
      "| guest writes pages/s under QEMU | under pvmigrate |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for name in wanted:
    q, p = qemu.get(name, []), pv.get(name, [])
    cells = []
    for kind in ("total", "downtime", "bytes"):
        qv, pvv = med(q, kind), med(p, kind)
        cells += [fmt(qv, kind), fmt(pvv, kind), ratio(qv, pvv)]
    cells += [fmt(med(q, "dirty"), "dirty"), fmt(med(p, "dirty"), "dirty")]
    print(f"| {name} | " + " | ".join(cells) + " |")
print()
print(f"Transport: pvmigrate TLS 1.3 with mutual authentication, {os.cpu_count()} parallel streams, zstd + XOR delta; "
      f"QEMU {'TLS (tls-creds-x509, verify-peer, the same certificates)' if use_tls else 'PLAINTEXT TCP (its TLS set-up failed here; see above)'}, "
      "one stream, default capabilities (no multifd, no compression, no xbzrle). Both: downtime target 50 ms.")
print("CAVEAT: under QEMU the guest has no PV interface and, on this PVM host, runs EMULATED (~3,000x slower than")
print("native), so QEMU's guest dirties far less memory than the same workload under pvmigrate. The dirtying cases")
print("are much easier for QEMU here than they would be on a hardware-KVM host; read those ratios with that in mind.")
print("The last two columns show it: how many pages per second the guest wrote before the migration (QEMU: its")
print("own progress report on the serial console; pvmigrate: its PV counters).")

like = [n for n in wanted if n.startswith("emulated-") or n == "bulk-1g"]
if like:
    def per_gib(rows, key):
        v = [r[key] / (r["pages"] * 4096 / (1 << 30)) for r in rows if r.get("pages")]
        return f"{statistics.median(v):.2f}" if v else "-"
    print()
    print("Like for like: the same guest, emulated under both VMMs, the same workload and dirty rate. Wire MB/s = bytes on the")
    print("wire / total time; CPU-s = the migration's CPU time without the vCPU (pvmigrate: per-thread meters; QEMU: its")
    print("processes' other threads, /proc/<pid>/task/*/stat); per GiB of guest pages moved (each engine's own count,")
    print("zero pages included: QEMU normal + duplicate, pvmigrate zero + raw + delta; bulk-1g: pages with data only,")
    print("QEMU normal, pvmigrate raw + delta). Guest MB/s = pages moved x 4 KiB / total time. QEMU multifd's wire bytes")
    print("are not measured: QEMU 7.2 counts multifd pages uncompressed in `transferred`.")
    print("| case | VMM | total | downtime | wire MiB | wire MB/s | guest MB/s | pages moved | CPU-s src | CPU-s dst | CPU-s/GiB src | dst | src+dst |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in like:
        variants = [("QEMU", qemu.get(name, []))]
        if name == "bulk-1g":
            multifd = qemu.get("bulk-1g multifd", [])
            for r in multifd:
                if not r.get("pages") and qemu.get(name): r["pages"] = med(qemu[name], "pages")  # the same memory
            variants.append(("QEMU multifd+zstd, 2 channels", multifd))
        for vmm, rows in variants + [("pvmigrate", pv.get(name, []))]:
            if not rows:
                print(f"| {name} | {vmm} | failed | | | | | | | | | | |"); continue
            for r in rows: r["both"] = r["cpu_src"] + r["cpu_dst"]
            wire = ("| not measured | not measured " if any(r["bytes"] is None for r in rows) else
                    f"| {med(rows, 'bytes') / 1048576:.1f} | {statistics.median(r['bytes'] / r['total'] for r in rows) / 1e6:.1f} ")
            print(f"| {name} | {vmm} | {med(rows, 'total'):.2f} s | {med(rows, 'downtime') * 1000:.1f} ms " + wire
                  + f"| {statistics.median(r['pages'] * 4096 / r['total'] for r in rows) / 1e6:.1f} "
                  f"| {med(rows, 'pages'):,.0f} | {med(rows, 'cpu_src'):.3f} | {med(rows, 'cpu_dst'):.3f} "
                  f"| {per_gib(rows, 'cpu_src')} | {per_gib(rows, 'cpu_dst')} | {per_gib(rows, 'both')} |")
missing = [n for n in wanted if not qemu.get(n) or not pv.get(n)] + (
    ["bulk-1g multifd"] if "bulk-1g" in wanted and not qemu.get("bulk-1g multifd") else [])
sys.exit(1 if missing else 0)
PY
