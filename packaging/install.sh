#!/usr/bin/env bash
# Installs Corral on a real node (Debian 12, as root): dependencies, the package
# in /opt/corral, the corral and corral-agent commands in /usr/local/bin, the
# systemd unit, and /etc/corral/agent.toml from the example if there is none.
# Then: edit /etc/corral/agent.toml and `systemctl enable --now corral-agent`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=/opt/corral PIP_TARGET="." packaging/install-deps.sh
ln -sf /opt/corral/bin/corral /usr/local/bin/corral
ln -sf /opt/corral/bin/corral-agent /usr/local/bin/corral-agent
install -D -m 0644 packaging/systemd/corral-agent.service /etc/systemd/system/corral-agent.service
install -d -m 0700 /etc/corral
if [ ! -e /etc/corral/agent.toml ]; then
  install -m 0600 packaging/agent.toml.example /etc/corral/agent.toml
  echo "==> wrote /etc/corral/agent.toml: set [node] name and address before starting the agent"
fi
install -d -m 0755 /usr/share/corral/os
cp -r packaging/os/. /usr/share/corral/os/
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
echo "installed; start with: systemctl enable --now corral-agent"
