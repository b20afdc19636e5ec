// Tests for MetricsRegistry: exact exposition text for a small registry (values chosen to be exact in
// binary so the text is predictable), bucket boundaries ("less than or equal"), label sorting and escaping,
// get-or-create identity, and exact totals under concurrent updates.
#include "serve/metrics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <thread>
#include <vector>

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

TEST(MetricsRegistryTest, DefaultLatencyBucketsAreIncreasing) {
  for (size_t k = 1; k < std::size(kLatencyBucketsSeconds); ++k) {
    EXPECT_LT(kLatencyBucketsSeconds[k - 1], kLatencyBucketsSeconds[k]);
  }
}

}  // namespace
}  // namespace freshet
