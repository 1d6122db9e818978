# shellcheck shell=bash disable=SC2034 # VM_* are read by lib/host.sh
# Two boots on one disk; the first ends with a SIGKILL of QEMU.
VM_DISKS=(backing:256M)
scenario_main() {
  VM_KILL_ON='^E2E READY-TO-KILL'
  vm_boot write e2e.phase=write || return 1
  if [ "$VM_RESULT" != KILLED ]; then
    echo "powerloss-skeleton: the write phase ended with $VM_RESULT before the kill"
    return 1
  fi
  VM_KILL_ON=
  vm_boot verify e2e.phase=verify
}
