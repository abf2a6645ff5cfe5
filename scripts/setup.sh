#!/usr/bin/env bash
# Prepares a Debian machine to build and test pvmigrate. Idempotent: it
# installs only what is missing and changes nothing otherwise.
#
#   - apt packages: libzstd-dev, libssl-dev (CZstd, COpenSSL) and pkg-config
#     (SwiftPM finds libzstd through it); openssl (the tool: tests read the
#     certificates `certs init` writes with `openssl x509 -text`, and make
#     certificates it never issues); iputils-ping, iputils-arping and iproute2
#     (the PV NIC end-to-end tests ping and arping the guest from namespaces
#     they create with `ip`); `apt-get update` runs once, and only
#     when something has to be installed.
#   - a Swift toolchain on PATH (or in /opt/swift/usr/bin).
#   - the Python packages zstandard (the conformance peer, Tests/conformance) and
#     prometheus_client (its text parser checks `listen --metrics`, docs/operations.md)
#     for the python3 on PATH, through `python3 -m pip install` when missing.
#   - /dev/kvm present and read/writable: only warned about, since building
#     and the unit tests do not need it (CoreTests/EndToEndTests that boot VMs do).
#
# Usage: scripts/setup.sh
set -euo pipefail

say() { echo "setup: $*"; }
fail() { echo "setup: ERROR: $*" >&2; exit 1; }
warn() {
    echo "" >&2
    echo "setup: ################################ WARNING ################################" >&2
    for line in "$@"; do echo "setup: # $line" >&2; done
    echo "setup: #########################################################################" >&2
    echo "" >&2
}

# --- apt packages -----------------------------------------------------------
packages=(libzstd-dev libssl-dev pkg-config openssl iputils-ping iputils-arping iproute2)
missing=()
if command -v dpkg-query >/dev/null 2>&1; then
    for package in "${packages[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$package")
        fi
    done
else
    fail "dpkg-query not found: this script supports Debian/Ubuntu; install ${packages[*]} (or your distribution's equivalents) by hand"
fi

if ((${#missing[@]} > 0)); then
    command -v apt-get >/dev/null 2>&1 || fail "missing ${missing[*]} and apt-get is not available; install them by hand"
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || fail "missing ${missing[*]}; run this script as root or install sudo"
        sudo=(sudo)
    fi
    say "installing ${missing[*]}"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q \
        || fail "apt-get update failed; check the network and /etc/apt/sources.list"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
        || fail "apt-get install ${missing[*]} failed; see the messages above"
else
    say "packages present: ${packages[*]}"
fi

pkg-config --exists libzstd || fail "pkg-config cannot find libzstd although libzstd-dev is installed; check PKG_CONFIG_PATH"
pkg-config --exists openssl || fail "pkg-config cannot find openssl although libssl-dev is installed; check PKG_CONFIG_PATH"
say "libzstd $(pkg-config --modversion libzstd), OpenSSL $(pkg-config --modversion openssl)"

# --- Swift toolchain --------------------------------------------------------
if ! command -v swift >/dev/null 2>&1; then
    if [ -x /opt/swift/usr/bin/swift ]; then
        export PATH="/opt/swift/usr/bin:$PATH"
        say "swift is not on PATH; using /opt/swift/usr/bin (add it to PATH to silence this)"
    else
        fail "swift not found on PATH or in /opt/swift/usr/bin; install a Swift 6.1+ toolchain from https://www.swift.org/install/linux/ and put its usr/bin on PATH"
    fi
fi
say "$(swift --version 2>&1 | grep -m1 -i 'swift version' || echo 'swift found, version unknown')"

# --- Python for the conformance peer and the metrics test -------------------
command -v python3 >/dev/null 2>&1 || fail "python3 not found: the conformance peer needs it (apt-get install python3 python3-pip)"
for module in zstandard prometheus_client; do
    if python3 -c "import $module" 2>/dev/null; then
        say "python3 $module present"
    else
        # Debian's python3-* packages serve only /usr/bin/python3; pip serves whichever python3 is on PATH.
        say "installing the Python package $module for $(command -v python3)"
        python3 -m pip install -q "$module" || fail "python3 -m pip install $module failed (install pip: apt-get install python3-pip)"
        python3 -c "import $module" || fail "$module installed but python3 cannot import it"
    fi
done

# --- KVM ----------------------------------------------------------------------
if [ ! -e /dev/kvm ]; then
    warn "/dev/kvm does not exist: pvmigrate cannot run VMs on this machine." \
         "Building and unit tests work; tests that boot guests will fail." \
         "Load the module (modprobe kvm_intel or kvm_amd) or enable nested virtualization."
elif [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
    warn "/dev/kvm exists but $(id -un) cannot read and write it: pvmigrate cannot run VMs." \
         "Add yourself to its group: sudo usermod -aG $(stat -c %G /dev/kvm) $(id -un) (then log in again)."
else
    say "/dev/kvm is usable"
fi

say "done"
