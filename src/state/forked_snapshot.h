// ForkedSnapshot: encodes a process's in-memory state in a forked child, so that the process goes on while the
// bytes are made.
//
// fork() gives the child a copy-on-write image of the parent's memory at that instant, as Redis's BGSAVE does:
// the child reads the state as it was when it was forked, however the parent changes it afterwards, and the
// parent's pause is only the fork (the kernel copying page tables, not the pages). Pages the parent writes while
// the child lives are copied then, so the process's memory can grow by up to the size of the state it changes
// meanwhile (README, Checkpoints).
//
// The child closes every descriptor but its pipe's, runs only `encode` (no other thread of the parent exists in
// it, so `encode` must not wait for a lock another thread may hold: it reads plain data structures and allocates),
// writes the bytes to the pipe and _exits.
// It dies with the thread that forked it (PR_SET_PDEATHSIG), so a kill -9 of the process leaves no child behind.
//
// Linux only (prctl). Not thread-safe; one instance per child.
#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>

#include "common/status.h"

namespace freshet {

class ForkedSnapshot {
 public:
  // Forks a child that runs encode() on its copy of the memory. An error if the process cannot fork (no memory,
  // process limit): the caller encodes in place instead.
  static Result<std::unique_ptr<ForkedSnapshot>> Start(const std::function<std::string()>& encode);

  ForkedSnapshot(const ForkedSnapshot&) = delete;
  ForkedSnapshot& operator=(const ForkedSnapshot&) = delete;
  ~ForkedSnapshot();  // A child not waited for is killed and reaped.

  // The child's bytes, once it has written them all and exited cleanly; an error saying how it failed otherwise.
  // Blocks until then; call once.
  Result<std::string> Wait();

  pid_t pid() const { return pid_; }

 private:
  ForkedSnapshot(pid_t pid, int read_fd) : pid_(pid), read_fd_(read_fd) {}
  pid_t pid_;
  int read_fd_;
  bool reaped_ = false;
};

}  // namespace freshet
