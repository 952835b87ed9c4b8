#!/bin/sh
# Creates, enables and persists a swap file of $1 MiB at /swapfile.
# Written by sam-cloudinit; the size is passed as an argument, never spliced in.
set -eu
size_mb="$1"
case "$size_mb" in
  '' | *[!0-9]*) echo "swap size must be a number of MiB" >&2; exit 2 ;;
esac
if [ ! -f /swapfile ]; then
  fallocate -l "${size_mb}M" /swapfile || dd if=/dev/zero of=/swapfile bs=1M count="$size_mb"
  chmod 0600 /swapfile
  mkswap /swapfile
fi
swapon --show=NAME --noheadings | grep -qx /swapfile || swapon /swapfile
grep -q '^/swapfile ' /etc/fstab || echo '/swapfile none swap sw,nofail 0 0' >> /etc/fstab
sysctl --load=/etc/sysctl.d/60-sam-swap.conf
