#!/usr/bin/env bash
# run.sh runs end-to-end scenarios in a QEMU (TCG) virtual machine with
# Debian's kernel and its nbd driver. See README.md.
#
# Usage: run.sh [-n N] [--list] [SCENARIO...]
#   SCENARIO...  scenarios to run (default: every one in scenarios/list)
#   -n N         run each scenario N times (flakiness check)
#   --list       print the scenarios and their timeouts
# Env:
#   E2E_CACHE           cache directory (default <repo>/.cache/e2e)
#   E2E_KERNEL_REFRESH  1: fetch the current Debian kernel again
#   E2E_KEEP_RUNS       run directories to keep (default 10)
#   E2E_SHELL           1: boot one scenario with the console on the terminal
#                       and a shell after it (debugging; C-a x quits QEMU)
# Exit status: 0 when every scenario passed.
set -euo pipefail
VM_DIR=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$VM_DIR/../../.." && pwd)
E2E_CACHE=${E2E_CACHE:-$ROOT/.cache/e2e}
export PATH=$PATH:/usr/local/go/bin:/usr/sbin:/sbin
# shellcheck source=lib/host.sh
. "$VM_DIR/lib/host.sh"

# Binaries built for every run (static) and put in the VM's /usr/local/bin:
# the project's, and csi-sanity at the csi-test version in go.mod.
E2E_BINARIES=(./cmd/csi-cache ./test/e2e/vm/cmd/e2e-nbd ./test/e2e/vm/cmd/csictl
  github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity)

repeat=1 list=0
names=()
while [ $# -gt 0 ]; do
  case $1 in
    -n) repeat=${2:?-n needs a count}; shift 2 ;;
    --list) list=1; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    -*) e2e_die "unknown flag $1" ;;
    *) names+=("$1"); shift ;;
  esac
done

# scenarios/list: "name timeout-seconds [manual]" per line, in run order; a
# manual scenario runs only when named.
declare -A timeout=()
order=()
while read -r n t flag _; do
  case $n in ''|'#'*) continue ;; esac
  [ -f "$VM_DIR/scenarios/$n.sh" ] || e2e_die "scenarios/list names $n but scenarios/$n.sh is missing"
  timeout[$n]=${t:-300}
  [ "${flag:-}" = manual ] || order+=("$n")
done < "$VM_DIR/scenarios/list"
if [ $list = 1 ]; then
  for n in "${order[@]}"; do printf '%-24s %ss\n' "$n" "${timeout[$n]}"; done
  exit 0
fi
[ ${#names[@]} -gt 0 ] || names=("${order[@]}")
for n in "${names[@]}"; do
  [ -f "$VM_DIR/scenarios/$n.sh" ] || e2e_die "no scenario $n (see --list)"
done

E2E_RUN=$E2E_CACHE/runs/$(date +%Y%m%d-%H%M%S)-$$
mkdir -p "$E2E_RUN/bin" "$E2E_RUN/pids"
cleanup() {
  local p
  for p in "$E2E_RUN"/pids/*; do
    if [ -e "$p" ]; then kill -9 "$(basename "$p")" 2>/dev/null || true; fi
  done
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

t0=$(date +%s.%N)
e2e_deps
e2e_kernel
e2e_base
(cd "$ROOT" && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$E2E_RUN/bin/" "${E2E_BINARIES[@]}")
e2e_initrd
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
printf 'e2e: kernel %s, initramfs %s, prepared in %ss; logs in %s\n' \
  "$KVER" "$(du -h "$INITRD" | cut -f1)" "$(since "$t0")" "$E2E_RUN"

if [ -n "${E2E_SHELL:-}" ]; then
  [ ${#names[@]} = 1 ] || e2e_die "E2E_SHELL=1 needs exactly one scenario"
  run_scenario "${names[0]}" 0 "$E2E_RUN/${names[0]}"
  exit 0
fi

passed=0 failed=0
for n in "${names[@]}"; do
  for ((i = 1; i <= repeat; i++)); do
    dir=$E2E_RUN/$n
    [ "$repeat" = 1 ] || dir=$dir.$i
    ts=$(date +%s.%N)
    if run_scenario "$n" "${timeout[$n]:-300}" "$dir" > "$dir.out" 2>&1; then
      res=PASS; passed=$((passed + 1))
    else
      res=FAIL; failed=$((failed + 1))
    fi
    el=$(since "$ts")
    if [ $res = FAIL ]; then
      echo "---- $n: last console lines ($dir) ----"
      cat "$dir.out"
      c=$(ls -t "$dir"/*.console 2>/dev/null | head -1 || true)
      if [ -n "$c" ]; then
        tail -n 60 "$c" | tr -d '\r'
        cat "$c.qemu" 2>/dev/null || true
      fi
      echo "----"
    fi
    printf 'e2e: %-24s %s %6ss\n' "$n" "$res" "$el"
  done
done

# Keep the newest run directories only.
ls -1d "$E2E_CACHE"/runs/*/ 2>/dev/null | sort | head -n -"${E2E_KEEP_RUNS:-10}" | xargs -r rm -rf
printf 'e2e: %d passed, %d failed in %ss\n' "$passed" "$failed" "$(since "$t0")"
[ "$failed" = 0 ]
