# shellcheck shell=bash disable=SC2034 # VM_* are read by lib/host.sh
# Two memory exports of up to 448 MiB, one after the other.
VM_MEM=1536
