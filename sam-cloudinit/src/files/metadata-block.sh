#!/bin/sh
# Rejects traffic to the cloud metadata endpoint (which serves this node's user-data)
# from workspace containers (DOCKER-USER) and from the unprivileged agent user.
# Idempotent: each rule is added only when missing.
set -eu
endpoint=169.254.169.254/32
add_rule() {
  iptables -C "$@" 2>/dev/null || iptables -I "$@"
}
# Docker jumps to DOCKER-USER from FORWARD and keeps an existing chain.
iptables -N DOCKER-USER 2>/dev/null || true
add_rule DOCKER-USER -d "$endpoint" -j REJECT
add_rule OUTPUT -d "$endpoint" -m owner --uid-owner sam -j REJECT
