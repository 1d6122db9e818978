# powerloss-writethrough: see powerloss-csi.inc.
# shellcheck shell=sh disable=SC2034
CACHE_MODE=writethrough
. /e2e/scenarios/powerloss-csi.inc
