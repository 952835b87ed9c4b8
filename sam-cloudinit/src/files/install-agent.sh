#!/bin/sh
# Downloads the SAM VM agent from $1, checks it against /etc/sam/sam-vm-agent.sha256
# when that file exists, and installs it. Nothing is installed if a step fails.
# Written by sam-cloudinit; the URL is passed as an argument, never spliced in.
set -eu
url="$1"
download=/usr/local/bin/sam-vm-agent.download
curl --fail --silent --show-error --location --retry 10 --retry-connrefused \
  --proto '=https,http' --proto-redir '=https' --output "$download" "$url"
if [ -f /etc/sam/sam-vm-agent.sha256 ]; then
  sha256sum --check --strict /etc/sam/sam-vm-agent.sha256
fi
install -m 0755 -o root -g root "$download" /usr/local/bin/sam-vm-agent
rm -f "$download"
