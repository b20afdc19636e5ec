# Sourced by the bench scripts: CPU time, in clock ticks, read from /proc (or from $proc_root, which the tests
# point at a folder of their own). Every function prints one number and succeeds under `set -euo pipefail`
# unless the process it was asked about is gone, which is a real failure of a measurement.
proc_root="${proc_root:-/proc}"

# The CPU time of process $1 (user + system, all its threads).
process_ticks() { awk '{sub(/^.*\) /, ""); print $12 + $13}' "$proc_root/$1/stat"; }

# The CPU time of every process except $1 and $2 (user + system, plus that of their waited-for children): tells
# whether other work on a shared machine disturbed a measurement. Processes come and go while /proc is read: one
# that exits between the listing and the read is simply not counted (cat reports it, and its status, 1, would
# otherwise fail the pipeline under pipefail; and one may exit while awk reads it, leaving an empty file).
other_ticks() {
  { cat "$proc_root"/[0-9]*/stat 2>/dev/null || true; } | awk -v skip1="$1" -v skip2="$2" '
    NF > 0 { p = $1; sub(/^.*\) /, ""); if (p != skip1 && p != skip2) sum += $12 + $13 + $14 + $15 }
    END {print sum + 0}'
}

# CPU time the hypervisor gave to other guests while this one wanted to run (the shared host's own disturbance).
steal_ticks() { awk '/^cpu / {print $9}' "$proc_root/stat"; }
