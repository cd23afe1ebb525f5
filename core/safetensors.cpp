// safetensors reader/writer and the atomic file write under it. See docs/FORMATS.md.
#include "core/safetensors.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_set>

#include "core/error.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors data is little-endian; this code copies it as host memory");

namespace sq {

namespace {

using json = nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;  // the reference reader's limit
constexpr const char* kCrcKey = "squeeze.crc32";

// ---- small helpers -------------------------------------------------------------------------

// A name or value from a file, shown JSON-quoted so control characters stay on one line.
std::string quote(const std::string& s) {
  return json(s).dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// nlohmann's message without its "[json.exception.xxx.nnn] " prefix, and with any raw byte of
// the offending input it quotes (which may be invalid UTF-8) shown as \xNN.
std::string json_what(const std::exception& e) {
  std::string w = e.what();
  if (!w.empty() && w[0] == '[') {
    size_t p = w.find("] ");
    if (p != std::string::npos) w = w.substr(p + 2);
  }
  std::string out;
  for (unsigned char c : w) {
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      char buf[5];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

uint32_t crc32_of(uint32_t crc, const uint8_t* p, size_t n) {
  uLong c = crc;
  while (n > 0) {
    uInt chunk = static_cast<uInt>(std::min<size_t>(n, 1u << 30));
    c = ::crc32(c, p, chunk);
    p += chunk;
    n -= chunk;
  }
  return static_cast<uint32_t>(c);
}

std::string hex8(uint32_t v) {
  char buf[9];
  std::snprintf(buf, sizeof buf, "%08x", v);
  return buf;
}

struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// Reads exactly n bytes at offset off; a short file is reported as truncated.
void pread_exact(int fd, const std::string& path, uint64_t off, void* dst, size_t n) {
  auto* p = static_cast<uint8_t*>(dst);
  while (n > 0) {
    size_t chunk = std::min<size_t>(n, 1u << 30);
    ssize_t r = ::pread(fd, p, chunk, static_cast<off_t>(off));
    if (r < 0) {
      if (errno == EINTR) continue;
      fail(path, ": read failed: ", std::strerror(errno));
    }
    if (r == 0) fail(path, ": unexpected end of file at byte ", off, " (file truncated?)");
    p += r;
    off += static_cast<uint64_t>(r);
    n -= static_cast<size_t>(r);
  }
}

// ---- dtypes ----------------------------------------------------------------------------------

enum class DType { F32, F64, F16, BF16 };

bool parse_dtype(const std::string& s, DType* out) {
  if (s == "F32") *out = DType::F32;
  else if (s == "F64") *out = DType::F64;
  else if (s == "F16") *out = DType::F16;
  else if (s == "BF16") *out = DType::BF16;
  else return false;
  return true;
}

uint64_t dtype_size(DType d) {
  switch (d) {
    case DType::F32: return 4;
    case DType::F64: return 8;
    case DType::F16: return 2;
    case DType::BF16: return 2;
  }
  return 0;
}

float bits_to_float(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// IEEE binary16 -> binary32, exact for every input (subnormals, infinities, NaN payloads).
float half_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (mant << 13));  // inf / nan
  if (exp != 0) return bits_to_float(sign | ((exp - 15 + 127) << 23) | (mant << 13));
  if (mant == 0) return bits_to_float(sign);  // +-0
  // Subnormal: mant * 2^-24, renormalised into a float32 normal.
  int e = -1;
  do {
    mant <<= 1;
    ++e;
  } while ((mant & 0x400u) == 0);
  mant &= 0x3ffu;
  return bits_to_float(sign | static_cast<uint32_t>(127 - 15 - e) << 23 | (mant << 13));
}

float bf16_to_float(uint16_t h) { return bits_to_float(static_cast<uint32_t>(h) << 16); }

void convert(DType d, const uint8_t* src, uint64_t count, float* dst) {
  switch (d) {
    case DType::F32:
      if (count > 0) std::memcpy(dst, src, count * 4);
      return;
    case DType::F64:
      for (uint64_t i = 0; i < count; ++i) {
        double v;
        std::memcpy(&v, src + 8 * i, 8);
        dst[i] = static_cast<float>(v);
      }
      return;
    case DType::F16:
      for (uint64_t i = 0; i < count; ++i) {
        uint16_t v;
        std::memcpy(&v, src + 2 * i, 2);
        dst[i] = half_to_float(v);
      }
      return;
    case DType::BF16:
      for (uint64_t i = 0; i < count; ++i) {
        uint16_t v;
        std::memcpy(&v, src + 2 * i, 2);
        dst[i] = bf16_to_float(v);
      }
      return;
  }
}

// ---- header parsing --------------------------------------------------------------------------

// SAX pre-pass over the raw header: reports the JSON syntax error, or the first key that occurs
// twice in one object (the DOM parser would silently keep only the last one).
struct DuplicateKeyCheck : nlohmann::json_sax<json> {
  std::vector<std::unordered_set<std::string>> keys;  // one per open object
  std::vector<bool> is_object;                       // one per open object or array
  std::string error;

  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override {
    keys.emplace_back();
    is_object.push_back(true);
    return true;
  }
  bool key(string_t& k) override {
    if (!keys.back().insert(k).second) {
      error = (is_object.size() == 1 ? "duplicate tensor name " : "duplicate key ") + quote(k) +
              " in the header";
      return false;
    }
    return true;
  }
  bool end_object() override {
    keys.pop_back();
    is_object.pop_back();
    return true;
  }
  bool start_array(std::size_t) override {
    is_object.push_back(false);
    return true;
  }
  bool end_array() override {
    is_object.pop_back();
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    error = "header is not valid JSON: " + json_what(e);
    return false;
  }
};

// A non-negative JSON integer, or nullopt-like false.
bool get_u64(const json& v, uint64_t* out) {
  if (!v.is_number_unsigned()) {
    if (v.is_number_integer() && v.get<int64_t>() >= 0) {  // defensive: signed but >= 0
      *out = static_cast<uint64_t>(v.get<int64_t>());
      return true;
    }
    return false;
  }
  *out = v.get<uint64_t>();
  return true;
}

struct Entry {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t count;
  uint64_t begin, end;
};

Entry parse_entry(const std::string& path, const std::string& name, const json& v,
                  uint64_t data_size) {
  const std::string where = path + ": tensor " + quote(name);
  if (!v.is_object()) fail(where, ": entry is not an object");
  for (auto it = v.begin(); it != v.end(); ++it)
    if (it.key() != "dtype" && it.key() != "shape" && it.key() != "data_offsets")
      fail(where, ": unknown field ", quote(it.key()));
  for (const char* k : {"dtype", "shape", "data_offsets"})
    if (!v.contains(k)) fail(where, ": missing \"", k, "\"");

  Entry e;
  e.name = name;
  const json& dt = v["dtype"];
  if (!dt.is_string()) fail(where, ": \"dtype\" is not a string");
  if (!parse_dtype(dt.get<std::string>(), &e.dtype))
    fail(where, ": unsupported dtype ", quote(dt.get<std::string>()),
         " (accepted: F32, F64, F16, BF16)");

  const json& sh = v["shape"];
  if (!sh.is_array()) fail(where, ": \"shape\" is not an array");
  bool zero = false;
  for (const json& d : sh) {
    if (d.is_number_integer() && !d.is_number_unsigned() && d.get<int64_t>() < 0)
      fail(where, ": negative dimension ", d.get<int64_t>(), " in shape ", sh.dump());
    uint64_t u;
    if (!get_u64(d, &u)) fail(where, ": shape ", sh.dump(), " has a non-integer dimension");
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail(where, ": dimension ", u, " too large");
    e.shape.push_back(static_cast<int64_t>(u));
    zero = zero || u == 0;
  }
  e.count = 1;
  for (int64_t d : e.shape)
    if (__builtin_mul_overflow(e.count, static_cast<uint64_t>(d), &e.count))
      fail(where, ": shape ", shape_str(e.shape), " has too many elements (overflow)");
  if (zero) e.count = 0;
  uint64_t bytes;
  if (__builtin_mul_overflow(e.count, dtype_size(e.dtype), &bytes))
    fail(where, ": shape ", shape_str(e.shape), " has too many elements (overflow)");

  const json& off = v["data_offsets"];
  if (!off.is_array() || off.size() != 2 || !get_u64(off[0], &e.begin) ||
      !get_u64(off[1], &e.end))
    fail(where, ": \"data_offsets\" is not a pair of non-negative integers: ", off.dump());
  if (e.end < e.begin) fail(where, ": data_offsets [", e.begin, ", ", e.end, "] are reversed");
  if (e.end > data_size)
    fail(where, ": data_offsets [", e.begin, ", ", e.end, "] extend beyond the ", data_size,
         "-byte data section (file truncated?)");
  if (e.end - e.begin != bytes)
    fail(where, ": data_offsets [", e.begin, ", ", e.end, "] span ", e.end - e.begin,
         " bytes but ", dt.get<std::string>(), " ", shape_str(e.shape), " needs ", bytes);
  return e;
}

}  // namespace

const TensorData* SafetensorsFile::find(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

// ---- writer ----------------------------------------------------------------------------------

void write_safetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::set<std::string> names;
  std::vector<uint64_t> sizes;
  uint64_t total = 0;
  uint32_t crc = crc32_of(0, nullptr, 0);
  for (const TensorRef& t : tensors) {
    if (t.name == "__metadata__") fail(path, ": a tensor may not be named \"__metadata__\"");
    if (!names.insert(t.name).second) fail(path, ": duplicate tensor name ", quote(t.name));
    uint64_t count = 1;
    for (int64_t d : t.shape) {
      if (d < 0) fail(path, ": tensor ", quote(t.name), " has a negative dimension in ",
                      shape_str(t.shape));
      if (__builtin_mul_overflow(count, static_cast<uint64_t>(d), &count))
        fail(path, ": tensor ", quote(t.name), " shape ", shape_str(t.shape), " overflows");
    }
    uint64_t bytes = count * 4;
    if (bytes / 4 != count || total + bytes < total)
      fail(path, ": tensor ", quote(t.name), " is too large");
    if (bytes > 0 && t.data == nullptr) fail(path, ": tensor ", quote(t.name), " has no data");
    if (bytes > 0) crc = crc32_of(crc, reinterpret_cast<const uint8_t*>(t.data), bytes);
    sizes.push_back(bytes);
    total += bytes;
  }

  // nlohmann::ordered_json keeps insertion order: metadata first, then tensors in data order.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  nlohmann::ordered_json meta = nlohmann::ordered_json::object();
  for (const auto& kv : metadata) meta[kv.first] = kv.second;
  meta[kCrcKey] = hex8(crc);
  header["__metadata__"] = std::move(meta);
  uint64_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    nlohmann::ordered_json e = nlohmann::ordered_json::object();
    e["dtype"] = "F32";
    e["shape"] = tensors[i].shape;
    e["data_offsets"] = {offset, offset + sizes[i]};
    header[tensors[i].name] = std::move(e);
    offset += sizes[i];
  }
  std::string text;
  try {
    text = header.dump();  // strict: throws on invalid UTF-8 in a name or metadata string
  } catch (const std::exception& ex) {
    fail(path, ": cannot encode the header: ", json_what(ex));
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // pad as the reference writer does

  std::vector<uint8_t> buf;
  buf.reserve(8 + text.size() + total);
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) buf.push_back(static_cast<uint8_t>(n >> (8 * i)));
  buf.insert(buf.end(), text.begin(), text.end());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto* p = reinterpret_cast<const uint8_t*>(tensors[i].data);
    if (sizes[i] > 0) buf.insert(buf.end(), p, p + sizes[i]);
  }
  atomic_write_file(path, buf.data(), buf.size());
}

// ---- reader ----------------------------------------------------------------------------------

SafetensorsFile read_safetensors(const std::string& path) {
  Fd f(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (f.fd < 0) fail(path, ": cannot open: ", std::strerror(errno));
  struct stat st;
  if (::fstat(f.fd, &st) != 0) fail(path, ": cannot stat: ", std::strerror(errno));
  if (S_ISDIR(st.st_mode)) fail(path, ": is a directory");
  if (!S_ISREG(st.st_mode)) fail(path, ": not a regular file");
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8)
    fail(path, ": file too short (", size, " bytes) to hold the 8-byte header length");

  uint8_t len[8];
  pread_exact(f.fd, path, 0, len, 8);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len[i];
  if (n > kMaxHeaderBytes) fail(path, ": header length ", n, " exceeds the 100 MB limit");
  if (n > size - 8)
    fail(path, ": header length ", n, " exceeds the ", size - 8,
         " bytes after the length field (file truncated?)");
  const uint64_t data_size = size - 8 - n;

  std::string text(n, '\0');
  pread_exact(f.fd, path, 8, text.data(), n);

  DuplicateKeyCheck check;
  if (!json::sax_parse(text.begin(), text.end(), &check)) fail(path, ": ", check.error);
  json header;
  try {
    header = json::parse(text.begin(), text.end());
  } catch (const std::exception& ex) {
    fail(path, ": header is not valid JSON: ", json_what(ex));
  }
  std::string().swap(text);
  if (!header.is_object()) fail(path, ": header is not a JSON object");

  SafetensorsFile out;
  std::vector<Entry> entries;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it.value().is_object()) fail(path, ": \"__metadata__\" is not an object");
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        if (!m.value().is_string())
          fail(path, ": metadata value for ", quote(m.key()), " is not a string");
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    entries.push_back(parse_entry(path, it.key(), it.value(), data_size));
  }
  header = json();

  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    if (a.begin != b.begin) return a.begin < b.begin;
    if (a.end != b.end) return a.end < b.end;
    return a.name < b.name;  // zero-size tensors sharing an offset
  });
  uint64_t covered = 0;
  const Entry* prev = nullptr;
  for (const Entry& e : entries) {
    if (e.begin < covered)
      fail(path, ": tensor ", quote(e.name), ": data_offsets [", e.begin, ", ", e.end,
           "] overlap tensor ", quote(prev->name), " [", prev->begin, ", ", prev->end, "]");
    if (e.begin > covered)
      fail(path, ": gap of ", e.begin - covered, " bytes in the data section before tensor ",
           quote(e.name), " at offset ", e.begin);
    covered = e.end;
    prev = &e;
  }
  if (covered != data_size)
    fail(path, ": data section is ", data_size, " bytes but the tensors cover only ", covered,
         " (trailing bytes)");

  std::vector<uint8_t> data(data_size);
  pread_exact(f.fd, path, 8 + n, data.data(), data_size);

  auto crc_it = out.metadata.find(kCrcKey);
  if (crc_it != out.metadata.end()) {
    const std::string& want = crc_it->second;
    bool ok = want.size() == 8 && std::all_of(want.begin(), want.end(), [](char c) {
                return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
              });
    if (!ok) fail(path, ": malformed ", kCrcKey, " ", quote(want), " (want 8 lowercase hex digits)");
    std::string got = hex8(crc32_of(crc32_of(0, nullptr, 0), data.data(), data.size()));
    if (got != want)
      fail(path, ": data section CRC-32 is ", got, " but the header records ", want,
           ": the file is corrupt");
  }

  out.tensors.reserve(entries.size());
  for (const Entry& e : entries) {
    TensorData t;
    t.name = e.name;
    t.shape = e.shape;
    t.data.resize(e.count);
    convert(e.dtype, data.data() + e.begin, e.count, t.data.data());
    out.tensors.push_back(std::move(t));
  }
  return out;
}

// ---- atomic write ----------------------------------------------------------------------------

namespace {

// The process umask, read without changing it (umask(2) is not thread-safe to probe).
mode_t current_umask() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("Umask:", 0) == 0) return static_cast<mode_t>(std::stoul(line.substr(6), nullptr, 8));
  return 022;
}

// A Ctrl-C or a scheduler's SIGTERM during a checkpoint write would otherwise leave a
// checkpoint-sized temporary behind. One slot, for the handler: the path is written before
// `g_armed` is set, and only whoever clears `g_armed` (an exchange) reads it afterwards.
constexpr int kCleanupSignals[] = {SIGINT, SIGTERM, SIGHUP, SIGXFSZ};
constexpr int kNumCleanupSignals = sizeof kCleanupSignals / sizeof kCleanupSignals[0];
static_assert(std::atomic<bool>::is_always_lock_free, "the signal handler needs lock-free atomics");

std::atomic<bool> g_slot_taken{false};  // try-lock: one write at a time is protected
std::atomic<bool> g_armed{false};       // g_tmp_path names a temporary that may exist
std::atomic<bool> g_removed{false};     // a handler took the slot and is done with g_tmp_path
pid_t g_tmp_owner = 0;                  // a forked child must not remove its parent's temporary
char g_tmp_path[PATH_MAX];
struct sigaction g_prev_action[kNumCleanupSignals];

// Async-signal-safe calls only. Where the signal would kill the process (its previous action is
// the default), removes the temporary, restores the default and re-raises. Where a handler was
// there first (squeeze train's stop request, an MPI library's), calls it and leaves the write to
// go on: that handler decides whether the process ends.
void remove_temp_on_signal(int sig, siginfo_t* info, void* context);

// Whether `a` runs remove_temp_on_signal, with or without SA_SIGINFO: a program that saved and
// restored it through signal() reinstalled it without the flag.
bool is_ours(const struct sigaction& a) {
  return (a.sa_flags & SA_SIGINFO) ? a.sa_sigaction == remove_temp_on_signal
                                   : reinterpret_cast<void*>(a.sa_handler) ==
                                         reinterpret_cast<void*>(&remove_temp_on_signal);
}

void remove_temp_on_signal(int sig, siginfo_t* info, void* context) {
  const int saved_errno = errno;
  int i = 0;
  while (i < kNumCleanupSignals && kCleanupSignals[i] != sig) ++i;
  if (i == kNumCleanupSignals) return;
  const struct sigaction& prev = g_prev_action[i];
  // Never chained to ourselves (that recursed until the stack ran out).
  const bool chain = !is_ours(prev) && ((prev.sa_flags & SA_SIGINFO) ||
                                        (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN));
  if (chain) {
    if (prev.sa_flags & SA_SIGINFO) prev.sa_sigaction(sig, info, context);
    else prev.sa_handler(sig);
    errno = saved_errno;
    return;
  }
  abandon_atomic_write();
  struct sigaction dfl;
  std::memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  ::sigaction(sig, &dfl, nullptr);
  ::raise(sig);  // blocked until this handler returns, then delivered to the default action
  errno = saved_errno;
}

// At every write: a handler installed since the last one (squeeze train's stop request is
// installed after a first write elsewhere in the process) becomes the one chained to.
void install_cleanup_handlers() {
  struct sigaction ours;
  std::memset(&ours, 0, sizeof ours);
  ours.sa_sigaction = remove_temp_on_signal;
  sigemptyset(&ours.sa_mask);
  for (int s : kCleanupSignals) sigaddset(&ours.sa_mask, s);
  ours.sa_flags = SA_RESTART | SA_SIGINFO;
  for (int i = 0; i < kNumCleanupSignals; ++i) {
    struct sigaction old;
    if (::sigaction(kCleanupSignals[i], nullptr, &old) != 0) continue;
    if (is_ours(old)) {  // reinstalled through signal(), without SA_SIGINFO: put the flag back
      if (!(old.sa_flags & SA_SIGINFO)) ::sigaction(kCleanupSignals[i], &ours, nullptr);
      continue;
    }
    // An ignored signal (nohup's SIGHUP) must stay harmless.
    if (!(old.sa_flags & SA_SIGINFO) && old.sa_handler == SIG_IGN) continue;
    g_prev_action[i] = old;
    ::sigaction(kCleanupSignals[i], &ours, nullptr);
  }
}

// Holds the slot while the temporary exists. Another thread writing at the same time finds the
// slot taken and goes unprotected (a signal then leaves its temporary, for the next run to remove).
class TempSlot {
 public:
  explicit TempSlot(const std::string& tmp) {
    if (tmp.size() >= sizeof g_tmp_path || g_slot_taken.exchange(true)) return;
    std::memcpy(g_tmp_path, tmp.c_str(), tmp.size() + 1);
    g_tmp_owner = ::getpid();
    g_armed.store(true);
    held_ = true;
  }
  TempSlot(const TempSlot&) = delete;
  TempSlot& operator=(const TempSlot&) = delete;
  ~TempSlot() { release(); }
  // Gives the slot up; false if a signal handler took it (and removed the temporary) first.
  bool release() {
    if (!held_) return true;
    held_ = false;
    const bool ours = g_armed.exchange(false);
    if (!ours)  // the handler may still be reading g_tmp_path on another thread
      while (!g_removed.load()) ::sched_yield();
    g_removed.store(false);
    g_slot_taken.store(false);
    return ours;
  }

 private:
  bool held_ = false;
};

// Removes `<base>.tmp.<host>.<pid>.XXXXXX` files in `dir` left by a process of this host that no
// longer exists (killed by SIGKILL, or the machine lost power). Best effort; a live process's
// temporary is never touched, nor one written from another host (on a shared filesystem its pid
// means nothing here).
void remove_stale_temps(const std::string& dir, const std::string& base, const std::string& host) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) return;  // the write itself will report why
  const std::string prefix = base + ".tmp." + host + ".";
  const pid_t self = ::getpid();
  std::vector<std::string> stale;
  while (const struct dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name.size() < prefix.size() + 8 || name.compare(0, prefix.size(), prefix) != 0) continue;
    const size_t dot = name.size() - 7;  // before mkstemp's six letters and digits
    const std::string digits = name.substr(prefix.size(), dot - prefix.size());
    auto digit = [](char c) { return c >= '0' && c <= '9'; };
    auto alnum = [&](char c) {
      return digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    };
    if (name[dot] != '.' || !std::all_of(name.begin() + dot + 1, name.end(), alnum) ||
        digits.empty() || digits.size() > 9 || !std::all_of(digits.begin(), digits.end(), digit))
      continue;
    const pid_t pid = static_cast<pid_t>(std::stol(digits));
    if (pid <= 0 || pid == self) continue;
    // ESRCH only: EPERM means alive (another user's process).
    if (::kill(pid, 0) != 0 && errno == ESRCH) stale.push_back(name);
  }
  for (const std::string& name : stale) ::unlinkat(::dirfd(d), name.c_str(), 0);
  ::closedir(d);
}

}  // namespace

std::string atomic_write_host() {
  // No '.' survives, so a temporary's name splits unambiguously; "localhost" if there is no name.
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0 || buf[0] == 0) return "localhost";
  std::string h(buf, ::strnlen(buf, 64));
  for (char& c : h)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-'))
      c = '_';
  return h;
}

void abandon_atomic_write() {
  if (g_armed.exchange(false)) {
    if (::getpid() == g_tmp_owner) ::unlink(g_tmp_path);
    g_removed.store(true);
  }
}

void check_writable(const std::string& path) {
  if (path.empty()) fail("output file: empty path");
  const std::string dir = dir_of(path);
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) fail(path, ": cannot write into ", dir, ": ", std::strerror(errno));
  if (!S_ISDIR(st.st_mode)) fail(path, ": cannot write into ", dir, ": not a directory");
  if (::access(dir.c_str(), W_OK | X_OK) != 0)
    fail(path, ": cannot write into ", dir, ": ", std::strerror(errno));
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) fail(path, ": is a directory");
}

std::string dir_of(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
}

bool same_file(const std::string& a, const std::string& b) {
  struct stat sa, sb;
  return ::stat(a.c_str(), &sa) == 0 && ::stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev &&
         sa.st_ino == sb.st_ino;
}

void atomic_write_file(const std::string& path, const void* data, size_t size) {
  if (path.empty()) fail("atomic write: empty path");
  const std::string dir = dir_of(path);
  const std::string host = atomic_write_host();
  remove_stale_temps(dir, path.substr(path.rfind('/') + 1), host);
  install_cleanup_handlers();

  std::string tmp = path + ".tmp." + host + "." + std::to_string(::getpid()) + ".XXXXXX";
  int fd = ::mkostemp(tmp.data(), O_CLOEXEC);
  if (fd < 0)
    fail(path, ": cannot create a temporary file in ", dir, ": ", std::strerror(errno));
  TempSlot slot(tmp);

  // From here on, any failure closes and removes the temporary and leaves `path` alone.
  auto bail = [&](const char* what) {
    int err = errno;
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    if (!slot.release()) fail(path, ": ", what, ": a signal removed the temporary file");
    fail(path, ": ", what, ": ", std::strerror(err));
  };

  // mkstemp makes the file 0600; give it the mode a plain create would have.
  if (::fchmod(fd, 0666 & ~current_umask()) != 0 && errno != EPERM && errno != ENOTSUP)
    bail("cannot set the mode of the temporary file");
  const auto* p = static_cast<const uint8_t*>(data);
  size_t left = size;
  while (left > 0) {
    ssize_t w = ::write(fd, p, std::min<size_t>(left, 1u << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      bail("write failed");
    }
    if (w == 0) {
      errno = EIO;
      bail("write made no progress");
    }
    p += w;
    left -= static_cast<size_t>(w);
  }
  if (::fsync(fd) != 0) bail("fsync failed");
  int rc = ::close(fd);
  fd = -1;
  if (rc != 0) bail("close failed");
  if (::rename(tmp.c_str(), path.c_str()) != 0) bail("cannot rename the temporary file over it");
  // Released after the rename, not before, so that no instant is left unguarded: a handler
  // that runs in between finds the name gone, and its unlink fails harmlessly.
  slot.release();

  // The new file is in place; make the rename itself durable.
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0)
    fail(path, ": written, but cannot open directory ", dir, " to fsync it: ", std::strerror(errno));
  if (::fsync(dfd) != 0 && errno != EINVAL) {  // EINVAL: the filesystem cannot sync directories
    int err = errno;
    ::close(dfd);
    fail(path, ": written, but fsync of directory ", dir, " failed: ", std::strerror(err));
  }
  if (::close(dfd) != 0)
    fail(path, ": written, but closing directory ", dir, " failed: ", std::strerror(errno));
}

}  // namespace sq
