# powerloss-writeback: see powerloss-csi.inc.
# shellcheck shell=sh disable=SC2034
CACHE_MODE=writeback
. /e2e/scenarios/powerloss-csi.inc
