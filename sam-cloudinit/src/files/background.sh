#!/bin/sh
# Runs a boot phase's command beside the phases that follow it.
#   background.sh start <phase> <program> [<argument>...]
#     starts the command in the background and returns at once; when the command
#     ends it records its exit status, and logs `PHASE END: <phase>` if it succeeded.
#   background.sh wait <phase>
#     waits for that status; exits 0, or with the command's status after copying
#     its output to the boot log (the phase script then logs `PHASE FAILED`).
# Written by sam-cloudinit; the command comes as arguments, never spliced into a
# shell line.
set -u
dir=/run/sam-boot
mode="$1"
phase="$2"
shift 2
case "$mode" in
start)
  mkdir -p "$dir"
  rm -f "$dir/$phase.status"
  (
    status=0
    "$@" || status=$?
    if [ "$status" -eq 0 ]; then
      logger -t sam-boot "PHASE END: $phase" || true
    fi
    echo "$status" > "$dir/$phase.status.part"
    mv "$dir/$phase.status.part" "$dir/$phase.status"
  ) < /dev/null > "$dir/$phase.log" 2>&1 &
  ;;
wait)
  while [ ! -f "$dir/$phase.status" ]; do
    sleep 1
  done
  status=$(cat "$dir/$phase.status")
  if [ "$status" -ne 0 ]; then
    tail -n 20 "$dir/$phase.log" | logger -t sam-boot-output || true
    exit "$status"
  fi
  ;;
*)
  echo "background.sh: unknown mode $mode" >&2
  exit 2
  ;;
esac
