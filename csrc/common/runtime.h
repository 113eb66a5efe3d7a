// Process-wide settings shared by every kernel: thread count, debug fill of scratch memory.
#pragma once
#include <cstddef>
#include <cstdint>

namespace pyconv {

int num_threads();
void set_num_threads(int n);

// When on, every workspace is filled with 0xA5 bytes before use, so a kernel that reads scratch
// it never wrote produces garbage the tests catch.
bool debug_fill();
void set_debug_fill(bool on);

// 64-byte aligned scratch memory; throws std::bad_alloc (MemoryError in Python) when it cannot.
class Workspace {
 public:
  explicit Workspace(size_t bytes);
  ~Workspace();
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Multiplies sizes, failing instead of overflowing.
size_t checked_bytes(int64_t count, size_t elem_size);

}  // namespace pyconv
