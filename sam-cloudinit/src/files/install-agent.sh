#!/bin/sh
# Downloads the SAM VM agent from $1, checks it against the SHA-256 pinned in
# /etc/sam/sam-vm-agent.sha256 and installs it. A missing checksum, a failed download
# or a mismatch fails the phase, and nothing is installed.
# Written by sam-cloudinit; the URL is passed as an argument, never spliced in.
set -eu
url="$1"
download=/usr/local/bin/sam-vm-agent.download
checksum=/etc/sam/sam-vm-agent.sha256
if [ ! -s "$checksum" ]; then
  echo "install-agent: $checksum is missing: the agent's SHA-256 must be pinned" >&2
  exit 3
fi
if ! curl --fail --silent --show-error --location --retry 10 --retry-connrefused \
  --proto '=https,http' --proto-redir '=https' --output "$download" "$url"; then
  echo "install-agent: cannot download the VM agent from $url" >&2
  rm -f "$download"
  exit 4
fi
if ! sha256sum --check --strict "$checksum"; then
  echo "install-agent: the VM agent from $url does not match its pinned SHA-256" >&2
  rm -f "$download"
  exit 5
fi
install -m 0755 -o root -g root "$download" /usr/local/bin/sam-vm-agent
rm -f "$download"
