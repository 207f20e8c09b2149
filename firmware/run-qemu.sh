#!/bin/sh
# Start the rig firmware under QEMU (mps2-an386, Cortex-M4) with its UART0
# on a pseudo-terminal. The first line of output is the path to open with
#   neurostimd --plant serial --port PATH
# (like `neurostimd rig`); QEMU then runs until this script is stopped
# (SIGINT/SIGTERM) or --duration seconds have passed.
#
# usage: run-qemu.sh [--core] [--elf FILE] [--link PATH] [--diag FILE]
#                    [--icount SHIFT] [--duration S] [-- QEMU ARGS...]
#   --core          the image without the on-chip neuron (passive membrane)
#   --elf FILE      another image
#   --link PATH     keep a symlink to the pty at PATH
#   --diag FILE     UART1 (one line of firmware counters per second) to FILE
#   --icount SHIFT  -icount shift=SHIFT,sleep=on: virtual time from
#                   instruction counts (2^SHIFT ns per instruction), for
#                   measuring; see docs/firmware.md
set -eu
here=$(cd "$(dirname "$0")" && pwd)
elf="$here/build/mps2/rig.elf"
link="" diag="" icount="" duration=""
while [ $# -gt 0 ]; do
    case "$1" in
    --core) elf="$here/build/mps2/rig-core.elf" ;;
    --elf) elf="$2"; shift ;;
    --link) link="$2"; shift ;;
    --diag) diag="$2"; shift ;;
    --icount) icount="$2"; shift ;;
    --duration) duration="$2"; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run-qemu.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[ -f "$elf" ] || { echo "run-qemu.sh: $elf missing (make -C $here)" >&2; exit 1; }
command -v qemu-system-arm >/dev/null || { echo "run-qemu.sh: qemu-system-arm missing (apt-get install qemu-system-arm)" >&2; exit 1; }
err=$(mktemp "${TMPDIR:-/tmp}/ns-rig-qemu.XXXXXX")
uart1=null
[ -z "$diag" ] || uart1="file:$diag"
set -- -M mps2-an386 -display none -monitor none -nodefaults \
    -kernel "$elf" -serial pty -serial "$uart1" \
    ${icount:+-icount shift=$icount,sleep=on} "$@"
qemu-system-arm "$@" >"$err" 2>&1 &
qpid=$!
cleanup() { kill "$qpid" 2>/dev/null || true; wait "$qpid" 2>/dev/null || true; rm -f "$err"; [ -z "$link" ] || rm -f "$link"; }
trap 'cleanup; exit 0' INT TERM
trap cleanup EXIT
pty=""
i=0
while [ -z "$pty" ]; do
    pty=$(sed -n 's/.*char device redirected to \(\/dev\/[^ ]*\) (label serial0).*/\1/p' "$err" | head -n 1)
    [ -n "$pty" ] && break
    if ! kill -0 "$qpid" 2>/dev/null || [ $i -gt 100 ]; then
        cat "$err" >&2
        echo "run-qemu.sh: QEMU did not start" >&2
        exit 1
    fi
    i=$((i + 1))
    sleep 0.05
done
if [ -n "$link" ]; then
    ln -sfn "$pty" "$link"
    pty="$link"
fi
echo "$pty"
echo "rig ready: run \`neurostimd --plant serial --port $pty\` (Ctrl-C stops QEMU)" >&2
if [ -n "$duration" ]; then
    ( sleep "$duration"; kill "$qpid" 2>/dev/null ) &
fi
wait "$qpid" || true
