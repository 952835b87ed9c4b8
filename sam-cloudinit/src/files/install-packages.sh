#!/bin/sh
# install-packages.sh <package>...: installs those of the packages that are missing.
# An image that already has them all (a pre-baked one) boots without apt and without
# a network; otherwise the package lists are refreshed and the missing packages
# installed without prompts, waiting for the dpkg lock, with needrestart (Ubuntu's
# images have it) suspended so that no service, Docker included, restarts.
# Written by sam-cloudinit; package names come from its own tables.
set -u
missing=""
for package in "$@"; do
  if ! dpkg-query -W -f='${Status}\n' "$package" 2>/dev/null | grep -q '^install ok installed$'; then
    missing="$missing $package"
  fi
done
if [ -z "$missing" ]; then
  echo "already installed: $*"
  exit 0
fi
apt-get update -q || exit $?
# $missing is split on purpose: one argument per package.
# shellcheck disable=SC2086
exec env DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 \
  apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 $missing
