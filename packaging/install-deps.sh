#!/usr/bin/env bash
# Installs what Corral needs on a Debian 12 machine (run as root):
# Debian packages, then the corral Python package into a venv (default ./.venv).
# Used by `make demo`/`make test`, and by packaging/install.sh for a real node.
# Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PACKAGES=(
  serf etcd-server etcd-client            # gossip membership; consensus + replicated config
  qemu-system-x86 qemu-utils              # instances; qemu-img for file disks
  busybox-static cpio kmod e2fsprogs      # the test guest and node-VM builders
  xz-utils                                # the node VMs' uncompressed kernel
  genisoimage                             # CD-ROM images in the console tests
  lvm2 drbd-utils                         # the plain and drbd disk templates
  python3 python3-venv python3-pip        # the agent and CLI
  iproute2 socat                          # bridged NICs (ip netns in tests); console checks
  systemd                                 # systemd-analyze verify of the unit
)
# The tests' real Ganeti clients (not for a node: packaging/install.sh passes PIP_TARGET="."): Debian's
# RAPI client library and htools (hinfo, hscan, hbal, hspace: no Ganeti daemons come with them), which
# tests/integration/test_rapi.py points at an agent's RAPI.
[ "${PIP_TARGET:-}" = "." ] || PACKAGES+=(python3-ganeti-rapi ganeti-htools-3.0)
GANETI_TESTSUITE=${CORRAL_GANETI_TESTSUITE:-/var/cache/corral/ganeti-testsuite}
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "==> installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# htools' data sets, from Debian's ganeti-testsuite (tests/unit/hostagent/test_htools*.py, bench/): the package
# depends on all of Ganeti, so only its files are unpacked, and no Ganeti daemon is installed.
if [ "${PIP_TARGET:-}" != "." ] && [ ! -d "$GANETI_TESTSUITE/test/data/htools" ]; then
  echo "==> unpacking Debian's ganeti-testsuite data sets into $GANETI_TESTSUITE"
  unpack=$(mktemp -d)
  (cd "$unpack" && { apt-get download -qq ganeti-testsuite 2>/dev/null || { apt-get update -qq && apt-get download -qq ganeti-testsuite; }; })
  dpkg -x "$unpack"/ganeti-testsuite_*.deb "$unpack/files"
  mkdir -p "$GANETI_TESTSUITE"
  cp -r "$unpack/files/usr/share/ganeti/testsuite/test" "$GANETI_TESTSUITE/"
  rm -rf "$unpack"
fi
# Debian's etcd-server enables a system-wide etcd on localhost:2379/2380, Corral's
# default ports. Corral runs its own members and never uses it: switch it off.
if [ -d /run/systemd/system ] && systemctl is-enabled --quiet etcd 2>/dev/null; then
  echo "==> disabling Debian's system-wide etcd.service (Corral runs its own etcd members)"
  systemctl disable --now etcd >/dev/null 2>&1 || true
fi
# Development default: an editable install with the test tools; packaging/install.sh
# passes PIP_TARGET="." for a plain install.
PIP_TARGET=${PIP_TARGET:--e .[test]}
if [ ! -x "$VENV/bin/corral" ] || [ pyproject.toml -nt "$VENV/.installed" ]; then
  echo "==> installing corral into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null
  # shellcheck disable=SC2086 # PIP_TARGET is two words for the editable install
  "$VENV/bin/pip" install -q $PIP_TARGET
  touch "$VENV/.installed"
fi
# make test measures coverage in every Python process it starts (agents, fence keepers, the tests),
# not in the short-lived `corral` CLI calls (hundreds of them; the CLI's unit tests run in-process) nor mypy:
# this hook starts coverage only when COVERAGE_PROCESS_START is set, so it costs nothing otherwise.
if [ "$PIP_TARGET" != "." ]; then
  SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  echo 'import os, sys; exec("import coverage; coverage.process_startup()") if os.environ.get("COVERAGE_PROCESS_START") and not sys.argv[0].endswith(("/corral", "/mypy")) else None' > "$SITE/corral-coverage.pth"
fi
