# Sourced by bench/serve_bench.sh and bench/serve_ab.sh: serve_workload N FILE writes the serving workload,
# 3 events (a view, a purchase, a login) for each of N users in the hour before 2026-01-01T12:00Z, in time order.
# Times are printed with %.0f: mawk's %d stops at 2^31 - 1, which put every event at 1970-01-25 until 2026-12-07.
serve_workload() {
  awk -v n="$1" 'BEGIN {
    base = 1767268800000 - 3600000;
    for (i = 1; i <= n; i++) {
      t = base + (i * 37) % 3600000;
      printf "{\"user_id\":\"u%d\",\"ts\":%.0f,\"type\":\"view\",\"category\":\"c%d\"}\n", i, t, i % 12;
      printf "{\"user_id\":\"u%d\",\"ts\":%.0f,\"type\":\"purchase\",\"amount\":%d.5,\"category\":\"c%d\"}\n", i, t + 1, i % 500, i % 12;
      printf "{\"user_id\":\"u%d\",\"ts\":%.0f,\"type\":\"login\",\"success\":false}\n", i, t + 2;
    }
  }' | sort -t, -k2,2 > "$2"
}
