#!/usr/bin/env bash
# Remove Snakemake's lock in this directory when no Snakemake process works here: a SIGKILLed run
# leaves its lock behind, and the next run would stop with "Directory cannot be locked". A lock
# held by a live run in this directory is left alone (concurrent runs must still be refused).
#   usage: workflow/unlock_if_stale.sh path/to/snakemake
set -euo pipefail
snakemake=${1:-snakemake}
[ -d .snakemake/locks ] && [ -n "$(ls -A .snakemake/locks 2>/dev/null)" ] || exit 0
here=$(pwd -P)
for pid in $(pgrep -f snakemake || true); do
    [ "$pid" = "$$" ] && continue
    tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q unlock_if_stale && continue
    if [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$here" ]; then
        echo "snakemake (pid $pid) is running in $here: leaving its lock" >&2
        exit 0
    fi
done
echo "removing the stale Snakemake lock of an interrupted run in $here" >&2
"$snakemake" --unlock >/dev/null
