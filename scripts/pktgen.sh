#!/bin/sh
# Kernel pktgen traffic for an xrouter benchmark on a host that has pktgen
# (CONFIG_NET_PKTGEN; Debian's kernels build it as a module). The usual tool
# on network nodes; `cargo xtask bench` uses its built-in XDP generator instead,
# for kernels without it.
#
# Sends UDP/IPv4 frames out of DEV towards a router port (DST_MAC: the MAC of
# the router's qr-/qg- port on that network) for DURATION seconds, varying
# the source port over FLOWS flows, from one kernel thread per CPU in CPUS;
# prints what pktgen sent and, when SINK_DEV is given, what arrived there
# (its rx counter, read in SINK_NS if set), as packets per second.
#
# Run it as root on the traffic generator (or in a namespace of the node that
# is plugged into the network's bridge), never towards addresses you do not
# own. Example, the gateway-SNAT case (VM 10.91.1.10 on net A to a host
# behind the external gateway, 1k flows, 64-byte frames, 10 s):
#
#   DEV=eth1 DST_MAC=fa:16:3e:91:00:0a SRC=10.91.1.10 DST=198.18.0.1 \
#   FLOWS=1000 CPUS="2 3" DURATION=10 SINK_DEV=eth2 scripts/pktgen.sh
#
# Variables (defaults in brackets):
#   DEV        egress device (required)
#   DST_MAC    destination MAC: the router port's (required)
#   SRC, DST   source and destination IPv4 addresses (required)
#   DPORT      destination UDP port [5001]
#   SPORT      first source port [10000]; flows use SPORT..SPORT+FLOWS-1
#   FLOWS      number of flows (source ports) [1]
#   SIZE       frame size without FCS [60] (60 = 64 bytes on the wire)
#   CPUS       CPUs of the pktgen threads [0]
#   DURATION   seconds [10]
#   RATE_PPS   offered rate per thread in packets/s (0: as fast as possible) [0]
#   CLONE      times each skb is sent before a new one is built [0 when
#              FLOWS > 1, else 1000]; higher is faster but repeats the flow
#   BURST      packets per xmit call (needs xmit_more support) [32]
#   SINK_DEV, SINK_NS  where to count what arrived (optional)
set -eu

: "${DEV:?DEV (egress device) is required}"
: "${DST_MAC:?DST_MAC (the router port MAC) is required}"
: "${SRC:?SRC is required}"
: "${DST:?DST is required}"
DPORT=${DPORT:-5001}
SPORT=${SPORT:-10000}
FLOWS=${FLOWS:-1}
SIZE=${SIZE:-60}
CPUS=${CPUS:-0}
DURATION=${DURATION:-10}
RATE_PPS=${RATE_PPS:-0}
BURST=${BURST:-32}
if [ -z "${CLONE:-}" ]; then
    if [ "$FLOWS" -gt 1 ]; then CLONE=0; else CLONE=1000; fi
fi
SINK_DEV=${SINK_DEV:-}
SINK_NS=${SINK_NS:-}

[ "$(id -u)" = 0 ] || { echo "pktgen.sh: run as root" >&2; exit 1; }
if [ ! -d /proc/net/pktgen ]; then
    modprobe pktgen 2>/dev/null || true
fi
[ -d /proc/net/pktgen ] || {
    echo "pktgen.sh: no /proc/net/pktgen: this kernel has no pktgen (CONFIG_NET_PKTGEN);" \
         "use \`cargo xtask bench\` instead" >&2
    exit 1
}

pgset() {
    # $1: file, $2: command. pktgen reports the outcome in the file itself.
    echo "$2" > "$1"
    r=$(grep '^Result:' "$1" 2>/dev/null || true)
    case "$r" in
        "" | *OK*) ;;
        *) echo "pktgen.sh: '$2' on $1: $r" >&2; exit 1 ;;
    esac
}

rx_packets() {
    [ -n "$SINK_DEV" ] || { echo 0; return; }
    if [ -n "$SINK_NS" ]; then
        ip netns exec "$SINK_NS" cat "/sys/class/net/$SINK_DEV/statistics/rx_packets"
    else
        cat "/sys/class/net/$SINK_DEV/statistics/rx_packets"
    fi
}

cleanup() {
    echo stop > /proc/net/pktgen/pgctrl 2>/dev/null || true
    for cpu in $CPUS; do
        echo rem_device_all > "/proc/net/pktgen/kpktgend_$cpu" 2>/dev/null || true
    done
}
trap cleanup EXIT INT TERM

cleanup
for cpu in $CPUS; do
    pgset "/proc/net/pktgen/kpktgend_$cpu" "add_device $DEV@$cpu"
    f="/proc/net/pktgen/$DEV@$cpu"
    pgset "$f" "count 0"
    pgset "$f" "clone_skb $CLONE"
    pgset "$f" "pkt_size $((SIZE + 4))"   # pktgen counts the FCS
    pgset "$f" "burst $BURST"
    pgset "$f" "dst_mac $DST_MAC"
    pgset "$f" "src_min $SRC"
    pgset "$f" "src_max $SRC"
    pgset "$f" "dst $DST"
    pgset "$f" "udp_dst_min $DPORT"
    pgset "$f" "udp_dst_max $DPORT"
    pgset "$f" "udp_src_min $SPORT"
    pgset "$f" "udp_src_max $((SPORT + FLOWS - 1))"
    pgset "$f" "flag NO_TIMESTAMP"
    if [ "$RATE_PPS" -gt 0 ]; then
        pgset "$f" "ratep $RATE_PPS"
    fi
done

rx0=$(rx_packets)
t0=$(date +%s.%N)
echo start > /proc/net/pktgen/pgctrl &
sleep "$DURATION"
echo stop > /proc/net/pktgen/pgctrl
wait
t1=$(date +%s.%N)
rx1=$(rx_packets)

sent=0
for cpu in $CPUS; do
    n=$(sed -n 's/.*pkts-sofar: \([0-9]*\).*/\1/p' "/proc/net/pktgen/$DEV@$cpu")
    sent=$((sent + ${n:-0}))
    echo "thread $cpu: $(grep -E '^Result|pps' "/proc/net/pktgen/$DEV@$cpu" | tr '\n' ' ')"
done
awk -v s="$sent" -v r="$((rx1 - rx0))" -v a="$t0" -v b="$t1" -v sink="$SINK_DEV" 'BEGIN {
    d = b - a
    printf "sent     %.3f Mpps (%d packets in %.1f s)\n", s / d / 1e6, s, d
    if (sink != "") printf "received %.3f Mpps at %s\n", r / d / 1e6, sink
}'
