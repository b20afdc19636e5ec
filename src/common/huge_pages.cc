#include "common/huge_pages.h"

#include <sys/mman.h>

#include <cstdint>

namespace freshet {
namespace {

size_t RoundUpToHugePage(size_t bytes) { return (bytes + kHugePageBytes - 1) & ~(kHugePageBytes - 1); }

}  // namespace

void* AllocateLarge(size_t bytes, size_t alignment) {
  if (bytes < kHugePageMinBytes) return ::operator new(bytes, std::align_val_t{alignment});
  const size_t length = RoundUpToHugePage(bytes);
  // Map one huge page more than needed and unmap the ends, so that the array starts on a 2 MiB boundary: a huge
  // page can only back an aligned 2 MiB range.
  const size_t mapped = length + kHugePageBytes;
  void* raw = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) throw std::bad_alloc();
  const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (start + kHugePageBytes - 1) & ~(uintptr_t{kHugePageBytes} - 1);
  if (aligned > start) munmap(raw, aligned - start);
  const uintptr_t end = start + mapped;
  if (end > aligned + length) munmap(reinterpret_cast<void*>(aligned + length), end - (aligned + length));
  // Only a hint: without THP (or with it `never`) the range keeps 4 KiB pages.
  madvise(reinterpret_cast<void*>(aligned), length, MADV_HUGEPAGE);
  return reinterpret_cast<void*>(aligned);
}

void FreeLarge(void* p, size_t bytes, size_t alignment) noexcept {
  if (p == nullptr) return;
  if (bytes < kHugePageMinBytes) {
    ::operator delete(p, std::align_val_t{alignment});
    return;
  }
  munmap(p, RoundUpToHugePage(bytes));
}

}  // namespace freshet
