// Native argument errors. The bindings translate pyconv::Error into pyconv.PyConvError.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace pyconv {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <typename... Args>
[[noreturn]] inline void fail(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  throw Error(os.str());
}

}  // namespace pyconv

#define PYCONV_CHECK(cond, ...)                 \
  do {                                          \
    if (!(cond)) ::pyconv::fail(__VA_ARGS__);   \
  } while (0)
