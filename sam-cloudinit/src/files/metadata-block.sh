#!/bin/sh
# Rejects traffic to the cloud's metadata endpoints (which serve this node's user-data,
# callback token included) from workspace containers (DOCKER-USER) and from the
# unprivileged agent user (OUTPUT, by owner). The endpoints of the node's provider are
# listed in /etc/sam/metadata-endpoints, one "ipv4 <address>" or "ipv6 <address>" a line.
# Idempotent: each rule is added only when missing.
set -eu
add_rule() {
  tables="$1"
  shift
  "$tables" -C "$@" 2>/dev/null || "$tables" -I "$@"
}
while read -r family address; do
  case "$family" in
    ipv4) tables=iptables; prefix=32 ;;
    ipv6) tables=ip6tables; prefix=128 ;;
    *) echo "metadata-block: unknown address family '$family'" >&2; exit 2 ;;
  esac
  # Docker jumps to DOCKER-USER from FORWARD and keeps an existing chain.
  "$tables" -N DOCKER-USER 2>/dev/null || true
  add_rule "$tables" DOCKER-USER -d "$address/$prefix" -j REJECT
  add_rule "$tables" OUTPUT -d "$address/$prefix" -m owner --uid-owner sam -j REJECT
done < /etc/sam/metadata-endpoints
