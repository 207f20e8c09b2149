#!/bin/sh
# Start the rig firmware under QEMU with its UART0 on a pseudo-terminal.
# The first line of output is the path to open with
#   neurostimd --plant serial --port PATH
# (like `neurostimd rig`); QEMU then runs until this script is stopped
# (SIGINT/SIGTERM) or --duration seconds have passed.
#
# Defaults: the lm3s6965evb image at 2 kHz, the combination whose emulated
# UART carries the daemon's command stream (docs/firmware.md, "What is and
# is not real time under QEMU"); --board mps2-an386 is the Cortex-M4F image
# the resource figures are measured on.
#
# usage: run-qemu.sh [--board B] [--core] [--elf FILE] [--link PATH]
#                    [--diag FILE] [--icount SHIFT] [--duration S] [-- QEMU ARGS...]
#   --board B       lm3s6965evb (Cortex-M3, PL011 UART with a FIFO; default)
#                   or mps2-an386 (Cortex-M4F, CMSDK UART)
#   --core          the mps2-an386 image without the on-chip neuron
#   --elf FILE      another image
#   --link PATH     keep a symlink to the pty at PATH
#   --diag FILE     UART1 (one line of firmware counters per second) to FILE
#   --rate HZ       sample rate (default 2000; the firmware's own default,
#                   without a loader, is 10000), announced in Hello
#   --garbage P, --stall-at S, --stall-ms MS   fault injection (lm3s image):
#                   1-64 random bytes after a sample with probability P;
#                   silent and deaf for MS from S (like `neurostimd rig`)
#   --icount SHIFT  -icount shift=SHIFT,sleep=on: virtual time from
#                   instruction counts (2^SHIFT ns per instruction), for
#                   measuring; see docs/firmware.md
set -eu
here=$(cd "$(dirname "$0")" && pwd)
board=lm3s6965evb core="" elf=""
link="" diag="" icount="" duration="" rate=2000 garbage=0 stall_at=0 stall_ms=0
while [ $# -gt 0 ]; do
    case "$1" in
    --board) board="$2"; shift ;;
    --core) core=1; board=mps2-an386 ;;
    --elf) elf="$2"; shift ;;
    --link) link="$2"; shift ;;
    --diag) diag="$2"; shift ;;
    --icount) icount="$2"; shift ;;
    --rate) rate="$2"; shift ;;
    --garbage) garbage=$(awk -v p="$2" 'BEGIN { printf "%d", p * 1000000 }'); shift ;;
    --stall-at) stall_at=$(awk -v s="$2" 'BEGIN { printf "%d", s * 1000 }'); shift ;;
    --stall-ms) stall_ms=$(awk -v s="$2" 'BEGIN { printf "%d", s }'); shift ;;
    --duration) duration="$2"; shift ;;
    --) shift; break ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "run-qemu.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
case "$board" in
mps2-an386) [ -n "$elf" ] || elf="$here/build/mps2/rig${core:+-core}.elf" ;;
lm3s6965evb) [ -n "$elf" ] || elf="$here/build/lm3s/rig.elf"
    [ -z "$core" ] || { echo "run-qemu.sh: --core is the mps2 image" >&2; exit 2; } ;;
*) echo "run-qemu.sh: --board mps2-an386 or lm3s6965evb" >&2; exit 2 ;;
esac
[ -f "$elf" ] || { echo "run-qemu.sh: $elf missing (make -C $here)" >&2; exit 1; }
command -v qemu-system-arm >/dev/null || { echo "run-qemu.sh: qemu-system-arm missing (apt-get install qemu-system-arm)" >&2; exit 1; }
err=$(mktemp "${TMPDIR:-/tmp}/ns-rig-qemu.XXXXXX")
uart1=null
[ -z "$diag" ] || uart1="file:$diag"
set -- -M "$board" -display none -monitor none -nodefaults \
    -kernel "$elf" -serial pty -serial "$uart1" \
    ${icount:+-icount shift=$icount,sleep=on} \
    ${rate:+-device loader,addr=0x20000000,data=0x45544152,data-len=4} \
    ${rate:+-device loader,addr=0x20000004,data=$rate,data-len=4} \
    -device loader,addr=0x20000008,data="$garbage",data-len=4 \
    -device loader,addr=0x2000000c,data="$stall_at",data-len=4 \
    -device loader,addr=0x20000010,data="$stall_ms",data-len=4 "$@"
qemu-system-arm "$@" >"$err" 2>&1 &
qpid=$!
# QEMU's PL011 model (lm3s6965evb) writes with a blocking loop: once the
# daemon has gone and the pty is full, QEMU no longer answers SIGTERM, so
# it gets SIGKILL after a second.
cleanup() {
    kill "$qpid" 2>/dev/null || true
    i=0
    while kill -0 "$qpid" 2>/dev/null && [ $i -lt 20 ]; do sleep 0.05; i=$((i + 1)); done
    kill -9 "$qpid" 2>/dev/null || true
    wait "$qpid" 2>/dev/null || true
    rm -f "$err"
    [ -z "$link" ] || rm -f "$link"
}
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
    ( sleep "$duration"; kill "$qpid" 2>/dev/null; sleep 1; kill -9 "$qpid" 2>/dev/null ) &
fi
wait "$qpid" || true
