// The standard process metrics and a build-info metric, as every Prometheus client library exports them, so
// that dashboards and alerts written for any Prometheus-instrumented service work for Freshet unchanged.
//
//   process_cpu_seconds_total        counter  user plus system CPU time of the process, in seconds
//   process_resident_memory_bytes    gauge    resident set size
//   process_virtual_memory_bytes     gauge    virtual memory size
//   process_open_fds                 gauge    open file descriptors
//   process_max_fds                  gauge    the soft limit on open file descriptors (+Inf when unlimited)
//   process_start_time_seconds       gauge    start of the process, in seconds since the Unix epoch
//   freshet_build_info{version,commit}  gauge  always 1; the labels say which build is running
//
// The process figures are read from /proc/self and getrusage/getrlimit each time the metrics are written
// (Linux only); one that cannot be read shows as NaN rather than a made-up number.
#pragma once

#include "serve/metrics.h"

namespace freshet {

// Registers the metrics above in `registry`. Calling it again on the same registry is harmless (the
// functions are replaced by equal ones). Thread-safe as the registry is.
void RegisterProcessMetrics(MetricsRegistry& registry);

}  // namespace freshet
