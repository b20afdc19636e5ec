// Tests for ForkedSnapshot: the child encodes the memory as it was at the fork while the parent changes it, its
// bytes come back whole (more than a pipe holds), it holds none of the parent's descriptors, a failing child is
// an error, and a dropped one is killed and reaped.
#include "state/forked_snapshot.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <new>
#include <string>
#include <thread>

namespace freshet {
namespace {

TEST(ForkedSnapshot, ChildEncodesTheMemoryAsItWasWhenForked) {
  std::string state(5 << 20, 'a');  // More than a pipe holds: the parent reads while the child writes.
  auto started = ForkedSnapshot::Start([&] {
    // The parent changes `state` at once; the child must not see that, however long it waits.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    return state;
  });
  ASSERT_TRUE(started.ok()) << started.status().message();
  state.assign(state.size(), 'b');
  Result<std::string> bytes = (*started)->Wait();
  ASSERT_TRUE(bytes.ok()) << bytes.status().message();
  EXPECT_EQ(*bytes, std::string(5 << 20, 'a'));
}

// A descriptor the parent closes while the child lives is closed for its peer at once: the child holds none.
TEST(ForkedSnapshot, ChildHoldsNoDescriptorOfTheParent) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  auto started = ForkedSnapshot::Start([] {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    return std::string("done");
  });
  ASSERT_TRUE(started.ok());
  ::close(fds[1]);
  char c;
  const auto before = std::chrono::steady_clock::now();
  EXPECT_EQ(::read(fds[0], &c, 1), 0);  // End of file now, not when the child ends.
  EXPECT_LT(std::chrono::steady_clock::now() - before, std::chrono::milliseconds(400));
  ::close(fds[0]);
  Result<std::string> bytes = (*started)->Wait();
  ASSERT_TRUE(bytes.ok()) << bytes.status().message();
  EXPECT_EQ(*bytes, "done");
}

TEST(ForkedSnapshot, EmptyStateRoundTrips) {
  auto started = ForkedSnapshot::Start([] { return std::string(); });
  ASSERT_TRUE(started.ok());
  Result<std::string> bytes = (*started)->Wait();
  ASSERT_TRUE(bytes.ok()) << bytes.status().message();
  EXPECT_EQ(*bytes, "");
}

TEST(ForkedSnapshot, AChildThatFailsIsAnErrorNotBytes) {
  auto started = ForkedSnapshot::Start([]() -> std::string { throw std::bad_alloc(); });
  ASSERT_TRUE(started.ok());
  Result<std::string> bytes = (*started)->Wait();
  ASSERT_FALSE(bytes.ok());
  EXPECT_NE(bytes.status().message().find("ran out of memory"), std::string::npos) << bytes.status().message();
}

TEST(ForkedSnapshot, DroppingItKillsAndReapsTheChild) {
  auto started = ForkedSnapshot::Start([] {
    std::this_thread::sleep_for(std::chrono::seconds(60));
    return std::string("late");
  });
  ASSERT_TRUE(started.ok());
  const pid_t pid = (*started)->pid();
  const auto before = std::chrono::steady_clock::now();
  started->reset();
  EXPECT_LT(std::chrono::steady_clock::now() - before, std::chrono::seconds(10));
  EXPECT_EQ(::kill(pid, 0), -1);  // Reaped: no such process (not even a zombie).
  EXPECT_EQ(errno, ESRCH);
}

}  // namespace
}  // namespace freshet
