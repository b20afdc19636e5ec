// SmallVector: a vector of trivially copyable values that keeps its first N elements inline, so the small
// sets most entities hold (a few categories in a session) need no heap block and no extra cache miss.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>

namespace freshet {

template <typename T, uint32_t N>
class SmallVector {
  static_assert(std::is_trivially_copyable_v<T>, "SmallVector holds trivially copyable values only");

 public:
  SmallVector() = default;
  SmallVector(const SmallVector& other) { Assign(other); }
  SmallVector(SmallVector&& other) noexcept { Steal(other); }
  SmallVector& operator=(const SmallVector& other) {
    if (this != &other) {
      size_ = 0;
      Assign(other);
    }
    return *this;
  }
  SmallVector& operator=(SmallVector&& other) noexcept {
    if (this != &other) {
      Release();
      Steal(other);
    }
    return *this;
  }
  ~SmallVector() { Release(); }

  T* begin() { return data(); }
  T* end() { return data() + size_; }
  const T* begin() const { return data(); }
  const T* end() const { return data() + size_; }
  uint32_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  const T& operator[](uint32_t k) const { return data()[k]; }
  // Heap bytes held (0 while inline).
  size_t heap_bytes() const { return capacity_ > N ? capacity_ * sizeof(T) : 0; }

  void push_back(const T& value) {
    const T copy = value;  // `value` may live in this vector, which Reserve may move.
    Reserve(size_ + 1);
    data()[size_++] = copy;
  }
  void reserve(uint32_t capacity) { Reserve(capacity); }
  void clear() { size_ = 0; }

  // Removes the element at `pos` (a pointer into this vector).
  void erase(T* pos) {
    const uint32_t at = static_cast<uint32_t>(pos - data());
    T* d = data();
    std::memmove(d + at, d + at + 1, (size_ - at - 1) * sizeof(T));
    --size_;
  }

  // Inserts `value` before `pos` (a pointer into this vector).
  void insert(T* pos, const T& value) {
    const uint32_t at = static_cast<uint32_t>(pos - data());
    Reserve(size_ + 1);
    T* d = data();
    std::memmove(d + at + 1, d + at, (size_ - at) * sizeof(T));
    d[at] = value;
    ++size_;
  }

 private:
  T* data() { return capacity_ > N ? heap_ : reinterpret_cast<T*>(inline_); }
  const T* data() const { return capacity_ > N ? heap_ : reinterpret_cast<const T*>(inline_); }

  void Reserve(uint32_t wanted) {
    if (wanted <= capacity_) return;
    const uint32_t capacity = std::max(wanted, capacity_ * 2);
    T* grown = static_cast<T*>(std::malloc(capacity * sizeof(T)));
    if (grown == nullptr) throw std::bad_alloc();
    std::memcpy(grown, data(), size_ * sizeof(T));
    Release();
    heap_ = grown;
    capacity_ = capacity;
  }
  void Release() {
    if (capacity_ > N) std::free(heap_);
    capacity_ = N;
  }
  void Assign(const SmallVector& other) {
    Reserve(other.size_);
    std::memcpy(data(), other.data(), other.size_ * sizeof(T));
    size_ = other.size_;
  }
  void Steal(SmallVector& other) {
    size_ = other.size_;
    capacity_ = other.capacity_;
    if (other.capacity_ > N) {
      heap_ = other.heap_;
    } else {
      std::memcpy(inline_, other.inline_, other.size_ * sizeof(T));
    }
    other.size_ = 0;
    other.capacity_ = N;
  }

  uint32_t size_ = 0;
  uint32_t capacity_ = N;
  union {
    alignas(T) unsigned char inline_[N * sizeof(T)];  // Trivially copyable values live here while small.
    T* heap_;
  };
};

}  // namespace freshet
