# shellcheck shell=bash disable=SC2034 # VM_* are read by lib/host.sh
# The node's disks: the cache device and the backing filesystem. Some specs
# create volumes without a capacity (1 GiB each); the disks are sparse.
VM_DISKS=(cache:1G backing:4G)
