// HugePageAllocator: an allocator for large arrays read at random places (a hash table's slots), backed by
// transparent huge pages where the kernel offers them.
//
// Why: a lookup in a large table (a 1M-key reference table's slot array is 384 MB) lands on a page that is almost
// never in the TLB. With 4 KiB pages the array needs ~100k page-table entries, more than the caches keep, so every
// lookup first walks the page table through memory; that walk is what a software prefetch of the slot waited on
// (`perf annotate`: 90% of TableSet::Prefetch's samples on its first prefetch). With 2 MiB pages the same array is
// ~200 TLB entries.
//
// Arrays of at least kHugePageMinBytes are mapped on their own, aligned to 2 MiB and marked MADV_HUGEPAGE
// (this machine's THP setting is `madvise`: only marked memory gets huge pages). Where THP is off, or no huge page
// is free when a page is first touched, the kernel gives 4 KiB pages: only slower, never wrong. Smaller arrays use
// operator new.
#pragma once

#include <cstddef>
#include <new>

namespace freshet {

inline constexpr size_t kHugePageBytes = size_t{2} << 20;
inline constexpr size_t kHugePageMinBytes = kHugePageBytes;

// `bytes` of memory aligned to `alignment` (a power of two up to kHugePageBytes); throws std::bad_alloc. Free
// with FreeLarge and the same `bytes` and `alignment`.
void* AllocateLarge(size_t bytes, size_t alignment);
void FreeLarge(void* p, size_t bytes, size_t alignment) noexcept;

template <typename T>
struct HugePageAllocator {
  using value_type = T;
  static_assert(alignof(T) <= kHugePageBytes);

  HugePageAllocator() = default;
  template <typename U>
  HugePageAllocator(const HugePageAllocator<U>&) noexcept {}

  T* allocate(size_t n) {
    if (n > static_cast<size_t>(-1) / sizeof(T)) throw std::bad_alloc();
    return static_cast<T*>(AllocateLarge(n * sizeof(T), alignof(T)));
  }
  void deallocate(T* p, size_t n) noexcept { FreeLarge(p, n * sizeof(T), alignof(T)); }

  template <typename U>
  bool operator==(const HugePageAllocator<U>&) const noexcept {
    return true;
  }
};

}  // namespace freshet
