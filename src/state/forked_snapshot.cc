#include "state/forked_snapshot.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace freshet {
namespace {

constexpr size_t kSizeBytes = 8;  // The child writes the length of its bytes first, so a cut-off write shows.

std::string ErrnoText() { return std::strerror(errno); }

// Writes all of `data`; false once the pipe fails (the parent is gone).
bool WriteAll(int fd, const char* data, size_t size) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

// In the child: no destructors, no atexit handlers, no stdio (their locks may be held by a thread that did not
// come along); only encode() and the pipe.
[[noreturn]] void RunChild(int fd, pid_t parent, const std::function<std::string()>& encode, long delay_ms) {
  // Dies with the thread that forked it; if the parent died before this line, nobody waits for the bytes.
  if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || ::getppid() != parent) ::_exit(3);
  // Every other descriptor closed: a socket the parent closes meanwhile (an HTTP client's, a broker's) must not
  // stay open in the child, or its peer would wait for the child to end before seeing it closed.
  if (fd > 0) ::close_range(0, static_cast<unsigned>(fd) - 1, 0);
  ::close_range(static_cast<unsigned>(fd) + 1, ~0u, 0);
  if (delay_ms > 0) ::usleep(static_cast<useconds_t>(delay_ms) * 1000);
  int code = 0;
  try {
    const std::string bytes = encode();
    char size[kSizeBytes];
    uint64_t n = bytes.size();
    for (char& c : size) {
      c = static_cast<char>(n & 0xFF);
      n >>= 8;
    }
    code = WriteAll(fd, size, sizeof size) && WriteAll(fd, bytes.data(), bytes.size()) ? 0 : 4;
  } catch (...) {  // std::bad_alloc: the parent reports the exit code.
    code = 5;
  }
  ::_exit(code);
}

std::string ExitText(int wstatus) {
  if (WIFSIGNALED(wstatus)) return "was killed by signal " + std::to_string(WTERMSIG(wstatus));
  switch (WEXITSTATUS(wstatus)) {
    case 3: return "started after its parent thread ended";
    case 4: return "could not write to its pipe";
    case 5: return "ran out of memory";
    default: return "exited with code " + std::to_string(WEXITSTATUS(wstatus));
  }
}

}  // namespace

Result<std::unique_ptr<ForkedSnapshot>> ForkedSnapshot::Start(const std::function<std::string()>& encode) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return Status::IoError("cannot make a pipe: " + ErrnoText());
  const pid_t parent = ::getpid();
  // For tests only: FRESHET_TEST_SNAPSHOT_DELAY_MS makes the child wait that long before encoding, so that a test
  // can see the process go on while a checkpoint is encoded whatever the machine's speed.
  static const long delay_ms = [] {
    const char* text = std::getenv("FRESHET_TEST_SNAPSHOT_DELAY_MS");
    return text == nullptr ? 0L : std::strtol(text, nullptr, 10);
  }();
  // For tests only: FRESHET_TEST_FORK_FAILS=1 makes every fork fail, so that a test can check the callers' path
  // for a process that cannot fork (a memory or process limit, which root does not hit in a test).
  static const bool fork_fails = [] {
    const char* text = std::getenv("FRESHET_TEST_FORK_FAILS");
    return text != nullptr && std::string_view(text) == "1";
  }();
  const pid_t pid = fork_fails ? -1 : ::fork();
  if (pid < 0) {
    const std::string reason = fork_fails ? std::string("FRESHET_TEST_FORK_FAILS is set") : ErrnoText();
    ::close(fds[0]);
    ::close(fds[1]);
    return Status::IoError("cannot fork a process to encode the state: " + reason);
  }
  if (pid == 0) {
    ::close(fds[0]);
    RunChild(fds[1], parent, encode, delay_ms);
  }
  ::close(fds[1]);
  return std::unique_ptr<ForkedSnapshot>(new ForkedSnapshot(pid, fds[0]));
}

ForkedSnapshot::~ForkedSnapshot() {
  if (read_fd_ >= 0) ::close(read_fd_);
  if (reaped_) return;
  ::kill(pid_, SIGKILL);
  while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
  }
}

Result<std::string> ForkedSnapshot::Wait() {
  std::string data;
  char buffer[1 << 16];
  for (;;) {
    const ssize_t n = ::read(read_fd_, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    data.append(buffer, static_cast<size_t>(n));
  }
  ::close(read_fd_);
  read_fd_ = -1;
  int wstatus = 0;
  pid_t waited;
  while ((waited = ::waitpid(pid_, &wstatus, 0)) < 0 && errno == EINTR) {
  }
  reaped_ = true;
  const std::string who = "the process encoding the state (pid " + std::to_string(pid_) + ")";
  if (waited != pid_) return Status::IoError("cannot wait for " + who + ": " + ErrnoText());
  if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) return Status::IoError(who + " " + ExitText(wstatus));
  uint64_t size = 0;
  for (size_t k = 0; k < kSizeBytes && k < data.size(); ++k) size |= uint64_t{static_cast<unsigned char>(data[k])} << (8 * k);
  if (data.size() < kSizeBytes || size != data.size() - kSizeBytes) {
    return Status::IoError(who + " wrote " + std::to_string(data.size()) + " bytes, not the " +
                           std::to_string(size + kSizeBytes) + " it announced");
  }
  data.erase(0, kSizeBytes);
  return data;
}

}  // namespace freshet
