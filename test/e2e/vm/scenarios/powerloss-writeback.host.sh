# shellcheck shell=bash
# shellcheck source=powerloss-csi.host.inc
. "$VM_DIR/scenarios/powerloss-csi.host.inc"
