// Tests for MetricsRegistry: exact exposition text for a small registry (values chosen to be exact in
// binary so the text is predictable), bucket boundaries ("less than or equal"), label sorting and escaping,
// get-or-create identity, exact totals under concurrent updates, the one number format, metrics read
// through functions, and the process metrics.
#include "serve/metrics.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "serve/process_metrics.h"

namespace freshet {
namespace {

TEST(MetricsRegistryTest, ExpositionTextIsExact) {
  MetricsRegistry registry;
  registry.GetCounter("things_total", "Things counted.", {{"kind", "a"}}).Increment(3);
  registry.GetCounter("things_total", "Things counted.", {{"kind", "b"}}).Increment();
  registry.GetGauge("queue_depth", "Items waiting.").Set(2.5);
  const double bounds[] = {0.125, 1};
  Histogram& h = registry.GetHistogram("latency_seconds", "Time taken.", bounds, {{"route", "/x"}});
  h.Observe(0.0625);
  h.Observe(0.125);  // On the bound: counts in the le="0.125" bucket.
  h.Observe(0.5);
  h.Observe(7);
  std::string text;
  registry.AppendText(&text);
  EXPECT_EQ(text,
            "# HELP things_total Things counted.\n"
            "# TYPE things_total counter\n"
            "things_total{kind=\"a\"} 3\n"
            "things_total{kind=\"b\"} 1\n"
            "# HELP queue_depth Items waiting.\n"
            "# TYPE queue_depth gauge\n"
            "queue_depth 2.5\n"
            "# HELP latency_seconds Time taken.\n"
            "# TYPE latency_seconds histogram\n"
            "latency_seconds_bucket{route=\"/x\",le=\"0.125\"} 2\n"
            "latency_seconds_bucket{route=\"/x\",le=\"1\"} 3\n"
            "latency_seconds_bucket{route=\"/x\",le=\"+Inf\"} 4\n"
            "latency_seconds_sum{route=\"/x\"} 7.6875\n"
            "latency_seconds_count{route=\"/x\"} 4\n");
}

TEST(MetricsRegistryTest, UnlabelledHistogramAndEdgeValues) {
  MetricsRegistry registry;
  const double bounds[] = {1, 2};
  Histogram& h = registry.GetHistogram("h", "H.", bounds);
  h.Observe(-5);  // Below every bound: first bucket.
  h.Observe(std::numeric_limits<double>::quiet_NaN());  // Ignored.
  h.Observe(std::numeric_limits<double>::infinity());    // +Inf bucket only.
  std::string text;
  registry.AppendText(&text);
  EXPECT_EQ(text,
            "# HELP h H.\n"
            "# TYPE h histogram\n"
            "h_bucket{le=\"1\"} 1\n"
            "h_bucket{le=\"2\"} 1\n"
            "h_bucket{le=\"+Inf\"} 2\n"
            "h_sum +Inf\n"
            "h_count 2\n");
}

TEST(MetricsRegistryTest, LabelsAreSortedAndEscaped) {
  MetricsRegistry registry;
  Counter& c = registry.GetCounter("c_total", "Help with \\ and\nnewline.",
                                   {{"zeta", "1"}, {"alpha", "quote\" back\\slash\nnewline"}});
  // The same labels in another order are the same metric.
  Counter& same = registry.GetCounter("c_total", "ignored", {{"alpha", "quote\" back\\slash\nnewline"}, {"zeta", "1"}});
  EXPECT_EQ(&c, &same);
  c.Increment(2);
  same.Increment(5);
  std::string text;
  registry.AppendText(&text);
  EXPECT_EQ(text,
            "# HELP c_total Help with \\\\ and\\nnewline.\n"
            "# TYPE c_total counter\n"
            "c_total{alpha=\"quote\\\" back\\\\slash\\nnewline\",zeta=\"1\"} 7\n");
}

TEST(MetricsRegistryTest, GetReturnsTheSameMetricForTheSameNameAndLabels) {
  MetricsRegistry registry;
  Counter& a = registry.GetCounter("x_total", "X.", {{"k", "1"}});
  Counter& b = registry.GetCounter("x_total", "X.", {{"k", "2"}});
  EXPECT_NE(&a, &b);
  // Many more children: references handed out earlier stay valid.
  for (int k = 3; k < 200; ++k) registry.GetCounter("x_total", "X.", {{"k", std::to_string(k)}}).Increment();
  EXPECT_EQ(&registry.GetCounter("x_total", "X.", {{"k", "1"}}), &a);
  a.Increment(11);
  EXPECT_EQ(a.value(), 11u);
  EXPECT_EQ(b.value(), 0u);
  Gauge& g = registry.GetGauge("g", "G.");
  g.Set(10);
  g.Add(-2.5);
  EXPECT_EQ(g.value(), 7.5);
}

TEST(MetricsRegistryTest, ConcurrentUpdatesAreExact) {
  MetricsRegistry registry;
  Counter& counter = registry.GetCounter("n_total", "N.");
  Gauge& gauge = registry.GetGauge("g", "G.");
  const double bounds[] = {0.5, 1.5};
  Histogram& histogram = registry.GetHistogram("h", "H.", bounds);
  constexpr int kThreads = 4;
  constexpr int kPerThread = 100000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int k = 0; k < kPerThread; ++k) {
        counter.Increment();
        gauge.Add(1);
        histogram.Observe(t % 2 == 0 ? 1.0 : 2.0);  // Exact sums: integers.
        // Readers and new registrations run concurrently with the updates.
        if (k % 10000 == 0) {
          std::string text;
          registry.AppendText(&text);
          registry.GetCounter("other_total", "O.", {{"t", std::to_string(t)}}).Increment();
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(counter.value(), uint64_t{kThreads} * kPerThread);
  EXPECT_EQ(gauge.value(), double{kThreads} * kPerThread);
  const Histogram::Snapshot snapshot = histogram.Read();
  ASSERT_EQ(snapshot.cumulative.size(), 3u);
  EXPECT_EQ(snapshot.cumulative[0], 0u);
  EXPECT_EQ(snapshot.cumulative[1], uint64_t{kThreads / 2} * kPerThread);  // The 1.0 observations.
  EXPECT_EQ(snapshot.cumulative[2], uint64_t{kThreads} * kPerThread);
  EXPECT_EQ(snapshot.count, uint64_t{kThreads} * kPerThread);
  EXPECT_EQ(snapshot.sum, (1.0 + 2.0) * (kThreads / 2) * kPerThread);
}

std::string Number(double value) {
  std::string text;
  AppendPrometheusNumber(value, &text);
  return text;
}

TEST(PrometheusNumberTest, IntegersHaveNoExponentAndOtherValuesRoundTrip) {
  EXPECT_EQ(Number(0), "0");
  EXPECT_EQ(Number(-0.0), "0");
  EXPECT_EQ(Number(7), "7");
  EXPECT_EQ(Number(-42), "-42");
  EXPECT_EQ(Number(1e6), "1000000");  // Not "1e+06", as the shortest form would have it.
  EXPECT_EQ(Number(1764930000), "1764930000");
  EXPECT_EQ(Number(9007199254740991.0), "9007199254740991");  // 2^53 - 1: the largest exact integer.
  EXPECT_EQ(Number(1764930000.123), "1764930000.123");        // A watermark in seconds.
  EXPECT_EQ(Number(0.0025), "0.0025");
  EXPECT_EQ(Number(0.0005), "0.0005");  // Not the shorter "5e-04".
  EXPECT_EQ(Number(0.0001), "0.0001");
  EXPECT_EQ(Number(0.00005), "5e-05");
  EXPECT_EQ(Number(2.5), "2.5");
  EXPECT_EQ(Number(0.1 + 0.2), "0.30000000000000004");  // Every digit needed to read back the same double.
  EXPECT_EQ(Number(1e21), "1e+21");                      // Beyond 2^53: scientific, which Go parses.
  EXPECT_EQ(Number(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(Number(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(Number(std::numeric_limits<double>::quiet_NaN()), "NaN");
  for (double value : {0.1, 1.0 / 3, 6.02214076e23, 1.5e-7, -2.718281828459045, 123456.789e-300, 0.00012345678901234567,
                       4503599627370495.5, -1e-4}) {
    EXPECT_EQ(std::strtod(Number(value).c_str(), nullptr), value) << Number(value);
  }
  std::string text;
  AppendPrometheusNumber(std::numeric_limits<uint64_t>::max(), &text);
  EXPECT_EQ(text, "18446744073709551615");  // Counters are exact, beyond what a double holds.
}

TEST(MetricsRegistryTest, GaugesAndBoundsUseTheOneNumberFormat) {
  MetricsRegistry registry;
  registry.GetGauge("big_bytes", "B.").Set(3e9);
  registry.GetGauge("unset", "U.").Set(std::numeric_limits<double>::quiet_NaN());
  const double bounds[] = {0.0005, 10, 1e6};
  registry.GetHistogram("h_seconds", "H.", bounds).Observe(2e6);
  std::string text;
  registry.AppendText(&text);
  EXPECT_EQ(text,
            "# HELP big_bytes B.\n"
            "# TYPE big_bytes gauge\n"
            "big_bytes 3000000000\n"
            "# HELP unset U.\n"
            "# TYPE unset gauge\n"
            "unset NaN\n"
            "# HELP h_seconds H.\n"
            "# TYPE h_seconds histogram\n"
            "h_seconds_bucket{le=\"0.0005\"} 0\n"
            "h_seconds_bucket{le=\"10\"} 0\n"
            "h_seconds_bucket{le=\"1000000\"} 0\n"
            "h_seconds_bucket{le=\"+Inf\"} 1\n"
            "h_seconds_sum 2000000\n"
            "h_seconds_count 1\n");
}

TEST(MetricsRegistryTest, FunctionMetricsAreReadAtEachExposition) {
  MetricsRegistry registry;
  double cpu = 1.25;
  double depth = 3;
  registry.SetCounterFunction("cpu_seconds_total", "CPU.", [&] { return cpu; });
  registry.SetGaugeFunction("depth", "Depth.", [&] { return depth; }, {{"queue", "a"}});
  const double bounds[] = {1, 2};
  Histogram::Snapshot snapshot{.cumulative = {1, 3, 4}, .count = 4, .sum = 9.5};
  registry.SetHistogramFunction("wait_seconds", "Wait.", bounds, [&] { return snapshot; });
  std::string first;
  registry.AppendText(&first);
  EXPECT_EQ(first,
            "# HELP cpu_seconds_total CPU.\n"
            "# TYPE cpu_seconds_total counter\n"
            "cpu_seconds_total 1.25\n"
            "# HELP depth Depth.\n"
            "# TYPE depth gauge\n"
            "depth{queue=\"a\"} 3\n"
            "# HELP wait_seconds Wait.\n"
            "# TYPE wait_seconds histogram\n"
            "wait_seconds_bucket{le=\"1\"} 1\n"
            "wait_seconds_bucket{le=\"2\"} 3\n"
            "wait_seconds_bucket{le=\"+Inf\"} 4\n"
            "wait_seconds_sum 9.5\n"
            "wait_seconds_count 4\n");
  cpu = 2;
  depth = 0.5;
  // Registering again replaces the function, in place.
  registry.SetGaugeFunction("depth", "Depth.", [] { return 8.0; }, {{"queue", "a"}});
  std::string second;
  registry.AppendText(&second);
  EXPECT_NE(second.find("cpu_seconds_total 2\n"), std::string::npos) << second;
  EXPECT_NE(second.find("depth{queue=\"a\"} 8\n"), std::string::npos) << second;
  EXPECT_EQ(second.find("depth{queue=\"a\"}", second.find("depth{queue=\"a\"} 8") + 1), std::string::npos);
}

// The samples of `text` without labels, by name.
std::map<std::string, double> UnlabelledSamples(const std::string& text) {
  std::map<std::string, double> samples;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    const size_t space = line.find(' ');
    if (line.empty() || line[0] == '#' || space == std::string::npos || line.find('{') < space) continue;
    samples[line.substr(0, space)] = std::strtod(line.c_str() + space + 1, nullptr);
  }
  return samples;
}

TEST(ProcessMetricsTest, ReportThisProcess) {
  MetricsRegistry registry;
  RegisterProcessMetrics(registry);
  RegisterProcessMetrics(registry);  // Again: harmless.
  // Some CPU time to see.
  volatile double sink = 0;
  for (int k = 0; k < 5'000'000; ++k) sink = sink + std::sqrt(static_cast<double>(k));
  std::string text;
  registry.AppendText(&text);
  const std::map<std::string, double> samples = UnlabelledSamples(text);
  EXPECT_GT(samples.at("process_cpu_seconds_total"), 0) << text;
  EXPECT_GT(samples.at("process_resident_memory_bytes"), 1 << 20) << text;  // A test binary: over 1 MiB.
  EXPECT_GE(samples.at("process_virtual_memory_bytes"), samples.at("process_resident_memory_bytes")) << text;
  // Against the kernel's other account of the same figures (kB in /proc/self/status), read just after.
  std::map<std::string, double> status_kib;
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    const size_t colon = line.find(':');
    if (colon != std::string::npos) status_kib[line.substr(0, colon)] = std::strtod(line.c_str() + colon + 1, nullptr);
  }
  EXPECT_NEAR(samples.at("process_resident_memory_bytes"), status_kib.at("VmRSS") * 1024, status_kib.at("VmRSS") * 256)
      << text;  // Within a quarter: memory may move between the two reads.
  EXPECT_NEAR(samples.at("process_virtual_memory_bytes"), status_kib.at("VmSize") * 1024,
              status_kib.at("VmSize") * 256)
      << text;
  EXPECT_GE(samples.at("process_open_fds"), 3) << text;  // stdin, stdout, stderr at least.
  EXPECT_GE(samples.at("process_max_fds"), samples.at("process_open_fds")) << text;
  // Started before now, and not before this test binary could have been built (2026).
  const double now = static_cast<double>(std::time(nullptr));
  EXPECT_LE(samples.at("process_start_time_seconds"), now + 1) << text;
  EXPECT_GT(samples.at("process_start_time_seconds"), 1.7e9) << text;
  EXPECT_NE(text.find("# TYPE process_cpu_seconds_total counter\n"), std::string::npos) << text;
  EXPECT_NE(text.find("freshet_build_info{commit=\""), std::string::npos) << text;
  EXPECT_NE(text.find("\",version=\"0.1.0\"} 1\n"), std::string::npos) << text;
  // Once each, though registered twice.
  const size_t sample = text.find("\nprocess_open_fds ");
  ASSERT_NE(sample, std::string::npos) << text;
  EXPECT_EQ(text.find("\nprocess_open_fds ", sample + 1), std::string::npos) << text;
}

TEST(MetricsRegistryTest, DefaultLatencyBucketsAreIncreasing) {
  for (size_t k = 1; k < std::size(kLatencyBucketsSeconds); ++k) {
    EXPECT_LT(kLatencyBucketsSeconds[k - 1], kLatencyBucketsSeconds[k]);
  }
  for (size_t k = 1; k < std::size(kDurationBucketsSeconds); ++k) {
    EXPECT_LT(kDurationBucketsSeconds[k - 1], kDurationBucketsSeconds[k]);
  }
}

}  // namespace
}  // namespace freshet
