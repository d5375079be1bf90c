#!/usr/bin/env bash
# Installs what Corral needs on a Debian 12 machine (run as root):
# Debian packages, then the corral Python package into a venv (default ./.venv).
# Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PACKAGES=(
  serf etcd-server etcd-client            # gossip membership; consensus + replicated config
  qemu-system-x86 qemu-utils              # instances; qemu-img for file disks
  busybox-static cpio kmod e2fsprogs      # the test guest builder
  python3 python3-venv python3-pip        # the agent and CLI
  iproute2 socat                          # bridged NICs (ip netns in tests); console checks
  systemd                                 # systemd-analyze verify of the unit
)
missing=()
for pkg in "${PACKAGES[@]}"; do
  [[ $pkg == \#* ]] && continue
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "==> installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's etcd-server enables a system-wide etcd on 127.0.0.1:2379; Corral runs
# its own members on their own ports and never uses it.
if [ ! -x "$VENV/bin/corral" ] || [ pyproject.toml -nt "$VENV/.installed" ]; then
  echo "==> installing corral into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null
  "$VENV/bin/pip" install -q -e '.[test]'
  touch "$VENV/.installed"
fi
