// Errors: library code throws sq::Error with a one-line message; launch/ catches, prints and
// exits non-zero. User-facing faults (bad files, flags, checkpoints) name the thing and what is
// wrong; internal invariants (SQ_ASSERT) also carry file:line.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace sq {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace detail {
inline void concat_into(std::ostringstream&) {}
template <class T, class... Rest>
void concat_into(std::ostringstream& os, const T& v, const Rest&... rest) {
  os << v;
  concat_into(os, rest...);
}
}  // namespace detail

// Builds a message from its pieces: sq::str("file ", path, ": truncated").
template <class... Args>
std::string str(const Args&... args) {
  std::ostringstream os;
  detail::concat_into(os, args...);
  return os.str();
}

template <class... Args>
[[noreturn]] void fail(const Args&... args) {
  throw Error(str(args...));
}

}  // namespace sq

// Internal invariant: a false condition is a bug, reported with file:line.
#define SQ_ASSERT(cond, ...)                                                               \
  do {                                                                                     \
    if (!(cond))                                                                           \
      ::sq::fail(__FILE__, ":", __LINE__, ": assertion `", #cond, "` failed. ", ##__VA_ARGS__); \
  } while (0)
