# shellcheck shell=bash disable=SC2034 # VM_* are read by lib/host.sh
VM_DISKS=(cache:1G backing:2G)
