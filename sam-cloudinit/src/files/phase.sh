#!/bin/sh
# Runs one command of a boot phase: phase.sh <phase> <program> [<argument>...].
# Boot runs under `set -e`, so a failure here stops it: this script logs which phase
# failed and the command's exit status, reports the failed boot to the control plane
# and exits with that status. Written by sam-cloudinit; the command comes as
# arguments, never spliced into a shell line.
set -u
phase="$1"
shift
"$@"
status=$?
if [ "$status" -eq 0 ]; then
  exit 0
fi
logger -t sam-boot "PHASE FAILED: $phase (exit $status)" || true
/usr/local/lib/sam-boot/report-boot-failure.sh "$phase" "$status" ||
  logger -t sam-boot "the boot failure could not be reported" || true
exit "$status"
