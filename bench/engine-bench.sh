#!/usr/bin/env bash
# engine-bench.sh — the engine's data-path benchmarks (pkg/engine/bench_*_test.go),
# each against its peer measured in the same run, repeated, as a table of medians.
#
#   Hit    4 KiB random reads that all hit, 1 and 32 readers, vs pread of the same
#          blocks of the cache file (target x-peer >= 0.7)
#   HitMem the same on an in-memory cache device vs a copy from it: the engine's
#          own cost per hit (ns/op, allocs/op), without the device's
#   Miss   4 KiB reads of cold blocks vs reads of the backing store itself
#          (target: overhead <= 10%, i.e. x-peer >= 0.91)
#   Zipf   Zipf(0.99) 4 KiB reads, 32 readers, volume 10x the cache, backing 1 ms
#          per IO, vs the backing alone (target x-peer >= 5), hit ratio next to
#          simulated LRU, bucket-LRU and Belady's OPT on the same trace
#   Write  4 KiB random writes, writeback and writethrough, vs the backing alone
#
# Usage: bench/engine-bench.sh [Hit|HitMem|Miss|Zipf|Write ...]
#        bench/engine-bench.sh -s FILE   (only the table, of raw output in FILE)
# Environment: COUNT (default 5), OUT (raw output file; default a temp file),
# SCALE (multiplies the iteration counts; default 1), CPU (go test -cpu: the
# GOMAXPROCS values to run with, e.g. 2,8; default the machine's). The table
# names each row's GOMAXPROCS as P=n.
# The iteration counts are fixed (-benchtime=Nx) so that every repetition does
# the same work; they suit a 2-core machine shared with other work (about
# 12 minutes in all with COUNT=5).
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=${COUNT:-5}
SCALE=${SCALE:-1}
summary_only=
if [ "${1:-}" = -s ]; then
	[ $# -eq 2 ] || { echo "usage: $0 -s FILE" >&2; exit 2; }
	summary_only=$2
	OUT=$2
fi
OUT=${OUT:-$(mktemp -t engine-bench.XXXXXX)}
which=("$@")
[ ${#which[@]} -gt 0 ] || which=(Hit HitMem Miss Zipf Write)

iters() { # benchmark → iterations per run
	case $1 in
	Hit) echo 40000 ;;
	HitMem) echo 400000 ;;
	Miss) echo 20000 ;;
	Zipf) echo 100000 ;;
	Write) echo 20000 ;;
	*) echo "unknown benchmark $1 (want Hit, HitMem, Miss, Zipf or Write)" >&2; exit 2 ;;
	esac
}

if [ -z "$summary_only" ]; then
	: >"$OUT"
	for w in "${which[@]}"; do
		n=$(awk -v n="$(iters "$w")" -v s="$SCALE" 'BEGIN { printf "%d", n * s }')
		echo "== BenchmarkEngine$w: -count=$COUNT -benchtime=${n}x" >&2
		go test -run '^$' -bench "^BenchmarkEngine$w\$" -count "$COUNT" -benchtime "${n}x" \
			${CPU:+-cpu "$CPU"} -timeout 120m ./pkg/engine/ | tee -a "$OUT" >&2
	done
	echo "raw output: $OUT" >&2
	echo
fi

# Medians per sub-benchmark and metric; the spread of x-peer as min..max.
awk '
function median(key, n,   i, j, t, a) {
	for (i = 1; i <= n; i++) a[i] = vals[key, i]
	for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
	if (n % 2) return a[(n + 1) / 2]
	return (a[n / 2] + a[n / 2 + 1]) / 2
}
function minmax(key, n,   i, lo, hi) {
	lo = hi = vals[key, 1]
	for (i = 2; i <= n; i++) { if (vals[key, i] < lo) lo = vals[key, i]; if (vals[key, i] > hi) hi = vals[key, i] }
	return sprintf("%.2f..%.2f", lo, hi)
}
function target(name) {
	if (name ~ /^EngineHit\//) return ">=0.70"
	if (name ~ /^EngineMiss\//) return ">=0.91"
	if (name ~ /^EngineZipf\//) return ">=5.00"
	return ""
}
/^Benchmark/ {
	name = $1; sub(/^Benchmark/, "", name)
	if (match(name, /-[0-9]+$/)) name = substr(name, 1, RSTART - 1) "/P=" substr(name, RSTART + 1)
	if (!(name in seen)) { seen[name] = 1; names[++nn] = name }
	for (i = 3; i + 1 <= NF; i += 2) {
		unit = $(i + 1)
		if (!((name, unit) in cnt)) { units[name] = units[name] " " unit }
		vals[name, unit, ++cnt[name, unit]] = $i
	}
}
END {
	printf "%-52s %10s %10s %7s %11s %-13s %s\n", "benchmark (medians)", "iops", "peer-iops", "x-peer", "x-peer range", "target", "other metrics"
	for (k = 1; k <= nn; k++) {
		name = names[k]
		iops = median(name SUBSEP "iops", cnt[name, "iops"])
		peer = median(name SUBSEP "peer-iops", cnt[name, "peer-iops"])
		x = median(name SUBSEP "x-peer", cnt[name, "x-peer"])
		t = target(name); verdict = ""
		if (t != "") { verdict = (x >= substr(t, 3) + 0) ? t " ok" : t " MISSED" }
		other = ""
		m = split(units[name], us, " ")
		for (u = 1; u <= m; u++) {
			if (us[u] == "iops" || us[u] == "peer-iops" || us[u] == "x-peer") continue
			other = other sprintf(" %s=%.4g", us[u], median(name SUBSEP us[u], cnt[name, us[u]]))
		}
		printf "%-52s %10.0f %10.0f %7.3f %11s %-13s%s\n", name, iops, peer, x, minmax(name SUBSEP "x-peer", cnt[name, "x-peer"]), verdict, other
	}
}' "$OUT"
