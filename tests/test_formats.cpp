// Weight files, checkpoints and the safetensors layer under them: round trips, files from an
// independent writer, every class of corruption, and the atomic write.
#include <dirent.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/checkpoint.h"
#include "core/error.h"
#include "core/params.h"
#include "core/safetensors.h"

namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;

// ---- helpers ---------------------------------------------------------------------------------

class Formats : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/sq_test_formats_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr) << std::strerror(errno);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::permissions(dir_, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(dir_, ec);
  }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }
  std::vector<std::string> listing(const std::string& d = "") const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(d.empty() ? dir_ : d))
      out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }
  std::string dir_;
};

void write_raw(const std::string& path, const Bytes& b) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  ASSERT_TRUE(out.good()) << path;
}

Bytes read_raw(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// An independent minimal safetensors writer: length prefix, the header text as given, data.
Bytes make_file(const std::string& header, const Bytes& data, uint64_t declared_len = ~0ull) {
  uint64_t n = declared_len == ~0ull ? header.size() : declared_len;
  Bytes b;
  for (int i = 0; i < 8; ++i) b.push_back(static_cast<uint8_t>(n >> (8 * i)));
  b.insert(b.end(), header.begin(), header.end());
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

template <class T>
void append(Bytes& b, T v) {
  uint8_t raw[sizeof(T)];
  std::memcpy(raw, &v, sizeof(T));
  b.insert(b.end(), raw, raw + sizeof(T));
}

// Runs fn, requires an sq::Error naming `path` first and containing `what`, on one line.
void expect_error(const std::function<void()>& fn, const std::string& path,
                  const std::string& what) {
  try {
    fn();
  } catch (const sq::Error& e) {
    std::string msg = e.what();
    EXPECT_EQ(msg.rfind(path + ": ", 0), 0u) << "message does not start with the path: " << msg;
    EXPECT_NE(msg.find(what), std::string::npos) << "expected \"" << what << "\" in: " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "multi-line message: " << msg;
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected sq::Error, got another exception: " << e.what();
    return;
  }
  ADD_FAILURE() << "expected an sq::Error containing \"" << what << "\", nothing was thrown";
}

// Bit-level CRC-32 (IEEE, reflected), independent of zlib.
uint32_t crc32_bitwise(const uint8_t* p, size_t n) {
  uint32_t c = 0xffffffffu;
  for (size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
  }
  return ~c;
}

std::string hex8(uint32_t v) {
  char buf[9];
  std::snprintf(buf, sizeof buf, "%08x", v);
  return buf;
}

// memcmp that accepts the null data() of empty vectors.
bool same_bytes(const void* a, const void* b, size_t n) { return n == 0 || std::memcmp(a, b, n) == 0; }

uint32_t float_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

// Random float32 bit patterns (all classes: normals, subnormals, inf, NaN payloads, -0).
std::vector<float> random_bits(std::mt19937_64& rng, size_t n) {
  std::vector<float> v(n);
  for (auto& x : v) {
    uint32_t b = static_cast<uint32_t>(rng());
    std::memcpy(&x, &b, 4);
  }
  return v;
}

// Random nonzero finite values.
std::vector<float> random_values(std::mt19937_64& rng, size_t n) {
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) {
    do x = d(rng);
    while (x == 0.0f);
  }
  return v;
}

int64_t numel(const std::vector<int64_t>& s) {
  int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

sq::ParamLayout small_layout() {
  sq::ParamLayout l;
  l.add("features.0.weight", {8, 3, 3, 3});
  l.add("features.0.bias", {8});
  l.add("features.3.squeeze.weight", {4, 8, 1, 1});
  l.add("features.3.squeeze.bias", {4});
  l.add("classifier.1.weight", {10, 4, 1, 1});
  l.add("classifier.1.bias", {10});
  return l;
}

// ---- safetensors round trip -------------------------------------------------------------------

TEST_F(Formats, SafetensorsRoundTripIsBitExact) {
  std::mt19937_64 rng(1234);
  struct T {
    std::string name;
    std::vector<int64_t> shape;
    std::vector<float> data;
  };
  std::vector<T> ts = {{"z.conv.weight", {3, 2, 3, 3}, {}}, {"a.bias", {5}, {}},
                       {"m.scalar", {}, {}},                {"empty", {0, 4}, {}},
                       {"big", {64, 33}, {}},               {"named \"odd\"\n✓", {2, 1}, {}}};
  for (auto& t : ts) t.data = random_bits(rng, static_cast<size_t>(numel(t.shape)));
  std::vector<sq::TensorRef> refs;
  for (auto& t : ts) refs.push_back({t.name, t.shape, t.data.data()});
  std::map<std::string, std::string> meta = {{"step", "123"},
                                             {"config", "{\"lr\": 0.1}\nsecond line"},
                                             {"unicode", "naïve ✓"},
                                             {"empty", ""},
                                             {"squeeze.crc32", "deadbeef"}};  // overridden
  const std::string p = path("rt.safetensors");
  sq::write_safetensors(p, refs, meta);

  sq::SafetensorsFile f = sq::read_safetensors(p);
  ASSERT_EQ(f.tensors.size(), ts.size());
  for (size_t i = 0; i < ts.size(); ++i) {
    SCOPED_TRACE(ts[i].name);
    EXPECT_EQ(f.tensors[i].name, ts[i].name);  // written order = data-offset order
    EXPECT_EQ(f.tensors[i].shape, ts[i].shape);
    ASSERT_EQ(f.tensors[i].data.size(), ts[i].data.size());
    EXPECT_TRUE(same_bytes(f.tensors[i].data.data(), ts[i].data.data(), ts[i].data.size() * 4));
    ASSERT_NE(f.find(ts[i].name), nullptr);
    EXPECT_EQ(f.find(ts[i].name)->name, ts[i].name);
  }
  EXPECT_EQ(f.find("nope"), nullptr);

  // The raw layout: padded header, packed data, a correct CRC-32 of the data section.
  Bytes raw = read_raw(p);
  ASSERT_GE(raw.size(), 8u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | raw[i];
  EXPECT_EQ(n % 8, 0u);
  size_t data_bytes = 0;
  for (auto& t : ts) data_bytes += t.data.size() * 4;
  ASSERT_EQ(raw.size(), 8 + n + data_bytes);
  std::string header(raw.begin() + 8, raw.begin() + 8 + static_cast<long>(n));
  EXPECT_EQ(header.front(), '{');
  auto j = nlohmann::json::parse(header);
  size_t off = 0;
  for (auto& t : ts) {
    EXPECT_EQ(j[t.name]["dtype"], "F32");
    EXPECT_EQ(j[t.name]["data_offsets"][0].get<size_t>(), off);
    off += t.data.size() * 4;
    EXPECT_EQ(j[t.name]["data_offsets"][1].get<size_t>(), off);
    EXPECT_TRUE(same_bytes(raw.data() + 8 + n + j[t.name]["data_offsets"][0].get<size_t>(),
                           t.data.data(), t.data.size() * 4));
  }
  const std::string crc = hex8(crc32_bitwise(raw.data() + 8 + n, data_bytes));
  auto expected_meta = meta;
  expected_meta["squeeze.crc32"] = crc;
  EXPECT_EQ(f.metadata, expected_meta);
  EXPECT_EQ(j["__metadata__"]["squeeze.crc32"], crc);
}

TEST_F(Formats, Crc32HelperMatchesKnownVector) {
  const char* s = "123456789";
  EXPECT_EQ(crc32_bitwise(reinterpret_cast<const uint8_t*>(s), 9), 0xcbf43926u);
}

TEST_F(Formats, EmptyFileRoundTrips) {
  const std::string p = path("empty.safetensors");
  sq::write_safetensors(p, {}, {});
  sq::SafetensorsFile f = sq::read_safetensors(p);
  EXPECT_TRUE(f.tensors.empty());
  EXPECT_EQ(f.metadata.size(), 1u);
  EXPECT_EQ(f.metadata.at("squeeze.crc32"), hex8(crc32_bitwise(nullptr, 0)));
}

// ---- a file from an independent writer ---------------------------------------------------------

TEST_F(Formats, ReadsHandBuiltFileWithAllDtypes) {
  Bytes data;
  // F16 [11] at [0, 22)
  const uint16_t halves[] = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x03FF, 0x0400,
                             0x7C00, 0xFC00, 0x7E00, 0x8000, 0x3555};
  for (uint16_t h : halves) append(data, h);
  // BF16 [2, 3] at [22, 34)
  const uint16_t bf[] = {0x3F80, 0xC040, 0x4049, 0x7F80, 0x0001, 0xFF80};
  for (uint16_t h : bf) append(data, h);
  // F64 [3] at [34, 58)
  const double dd[] = {0.1, -1e-3, 3.0};
  for (double d : dd) append(data, d);
  // F32 [2] at [58, 66), F32 scalar at [66, 70), F16 [0, 3] at [70, 70)
  append(data, 1.5f);
  append(data, -0.25f);
  append(data, 42.0f);
  ASSERT_EQ(data.size(), 70u);
  // Keys deliberately not in data order; no padding, no CRC, extra whitespace.
  const std::string header = R"({ "scalar": {"shape": [], "dtype": "F32", "data_offsets": [66, 70]},
    "f64": {"dtype": "F64", "shape": [3], "data_offsets": [34, 58]},
    "__metadata__": {"source": "hand", "format": "pt"},
    "half": {"dtype": "F16", "shape": [11], "data_offsets": [0, 22]},
    "empty": {"dtype": "F16", "shape": [0, 3], "data_offsets": [70, 70]},
    "bf": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [22, 34]},
    "a_f32": {"dtype": "F32", "shape": [2], "data_offsets": [58, 66]} })";
  const std::string p = path("hand.safetensors");
  write_raw(p, make_file(header, data));

  sq::SafetensorsFile f = sq::read_safetensors(p);
  EXPECT_EQ(f.metadata, (std::map<std::string, std::string>{{"source", "hand"}, {"format", "pt"}}));
  ASSERT_EQ(f.tensors.size(), 6u);
  const char* order[] = {"half", "bf", "f64", "a_f32", "scalar", "empty"};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(f.tensors[i].name, order[i]);

  const auto& h = f.tensors[0];
  EXPECT_EQ(h.shape, (std::vector<int64_t>{11}));
  ASSERT_EQ(h.data.size(), 11u);
  EXPECT_EQ(h.data[0], 1.0f);
  EXPECT_EQ(h.data[1], -2.0f);
  EXPECT_EQ(h.data[2], 65504.0f);
  EXPECT_EQ(h.data[3], std::ldexp(1.0f, -24));
  EXPECT_EQ(h.data[4], std::ldexp(1023.0f, -24));
  EXPECT_EQ(h.data[5], std::ldexp(1.0f, -14));
  EXPECT_EQ(h.data[6], INFINITY);
  EXPECT_EQ(h.data[7], -INFINITY);
  EXPECT_TRUE(std::isnan(h.data[8]));
  EXPECT_EQ(float_bits(h.data[9]), 0x80000000u);  // -0
  EXPECT_EQ(h.data[10], 0.333251953125f);

  const auto& b = f.tensors[1];
  EXPECT_EQ(b.shape, (std::vector<int64_t>{2, 3}));
  ASSERT_EQ(b.data.size(), 6u);
  EXPECT_EQ(b.data[0], 1.0f);
  EXPECT_EQ(b.data[1], -3.0f);
  EXPECT_EQ(b.data[2], 3.140625f);
  EXPECT_EQ(b.data[3], INFINITY);
  EXPECT_EQ(b.data[4], std::ldexp(1.0f, -133));
  EXPECT_EQ(b.data[5], -INFINITY);

  const auto& d = f.tensors[2];
  ASSERT_EQ(d.data.size(), 3u);
  EXPECT_EQ(d.data[0], static_cast<float>(0.1));
  EXPECT_EQ(d.data[1], static_cast<float>(-1e-3));
  EXPECT_EQ(d.data[2], 3.0f);

  EXPECT_EQ(f.tensors[3].data, (std::vector<float>{1.5f, -0.25f}));
  EXPECT_TRUE(f.tensors[4].shape.empty());
  EXPECT_EQ(f.tensors[4].data, (std::vector<float>{42.0f}));
  EXPECT_EQ(f.tensors[5].shape, (std::vector<int64_t>{0, 3}));
  EXPECT_TRUE(f.tensors[5].data.empty());
}

// Reference binary16 decoding by arithmetic, not bit manipulation.
float half_reference(uint16_t h) {
  int sign = (h >> 15) ? -1 : 1;
  int exp = (h >> 10) & 0x1f;
  int mant = h & 0x3ff;
  if (exp == 31) return mant ? NAN : sign * INFINITY;
  if (exp == 0) return sign * std::ldexp(static_cast<float>(mant), -24);
  return sign * std::ldexp(static_cast<float>(1024 + mant), exp - 25);
}

TEST_F(Formats, F16AndBF16ConversionIsExactForEveryCode) {
  Bytes data;
  for (uint32_t c = 0; c < 65536; ++c) append(data, static_cast<uint16_t>(c));
  for (uint32_t c = 0; c < 65536; ++c) append(data, static_cast<uint16_t>(c));
  const std::string header =
      R"({"h": {"dtype": "F16", "shape": [256, 256], "data_offsets": [0, 131072]},
          "b": {"dtype": "BF16", "shape": [65536], "data_offsets": [131072, 262144]}})";
  const std::string p = path("all16.safetensors");
  write_raw(p, make_file(header, data));
  sq::SafetensorsFile f = sq::read_safetensors(p);
  ASSERT_EQ(f.tensors.size(), 2u);
  ASSERT_EQ(f.tensors[0].name, "h");
  ASSERT_EQ(f.tensors[0].data.size(), 65536u);
  ASSERT_EQ(f.tensors[1].data.size(), 65536u);
  int bad = 0;
  for (uint32_t c = 0; c < 65536; ++c) {
    float got = f.tensors[0].data[c], want = half_reference(static_cast<uint16_t>(c));
    bool ok = std::isnan(want) ? std::isnan(got) : float_bits(got) == float_bits(want);
    ok = ok && std::signbit(got) == ((c & 0x8000u) != 0);
#ifdef __FLT16_MANT_DIG__
    _Float16 h;
    uint16_t c16 = static_cast<uint16_t>(c);
    std::memcpy(&h, &c16, 2);
    float hw = static_cast<float>(h);
    ok = ok && (std::isnan(hw) ? std::isnan(got) : float_bits(got) == float_bits(hw));
#endif
    if (!ok && bad++ < 5) ADD_FAILURE() << "F16 code 0x" << std::hex << c << " -> " << got;
    float bgot = f.tensors[1].data[c];
    if (float_bits(bgot) != c << 16 && bad++ < 5)
      ADD_FAILURE() << "BF16 code 0x" << std::hex << c << " -> " << bgot;
  }
  EXPECT_EQ(bad, 0);
}

// ---- weights and checkpoints ------------------------------------------------------------------

TEST_F(Formats, WeightsRoundTripIsBitExact) {
  std::mt19937_64 rng(99);
  sq::ParamLayout layout = small_layout();
  std::vector<float> params = random_values(rng, layout.total);
  const std::string p = path("w.safetensors");
  sq::export_weights(p, layout, params.data(), {{"note", "hello"}});

  std::vector<float> back(layout.total, 7.0f);
  sq::Metadata meta = sq::import_weights(p, layout, back.data());
  EXPECT_EQ(std::memcmp(back.data(), params.data(), params.size() * 4), 0);
  EXPECT_EQ(meta.at("note"), "hello");
  EXPECT_EQ(meta.at("squeeze.kind"), "weights");
  EXPECT_EQ(meta.count("squeeze.crc32"), 1u);

  // One tensor per parameter, named by its key, with its shape, in layout order.
  sq::SafetensorsFile f = sq::read_safetensors(p);
  ASSERT_EQ(f.tensors.size(), layout.tensors.size());
  for (size_t i = 0; i < layout.tensors.size(); ++i) {
    EXPECT_EQ(f.tensors[i].name, layout.tensors[i].name);
    EXPECT_EQ(f.tensors[i].shape, layout.tensors[i].shape);
  }
}

TEST_F(Formats, CheckpointRoundTripIsBitExact) {
  std::mt19937_64 rng(7);
  sq::ParamLayout layout = small_layout();
  std::vector<float> params = random_values(rng, layout.total);
  std::vector<float> momentum = random_values(rng, layout.total);
  sq::Metadata meta = {{"step", "1234"},
                       {"epoch", "3"},
                       {"config", "{\"lr\": 0.04, \"batch\": 512}"},
                       {"squeeze.kind", "weights"}};  // library keys are overridden
  const std::string p = path("ckpt.safetensors");
  sq::save_checkpoint(p, layout, params.data(), momentum.data(), meta);

  std::vector<float> p2(layout.total, -1.0f), m2(layout.total, -1.0f);
  sq::Metadata got = sq::load_checkpoint(p, layout, p2.data(), m2.data());
  EXPECT_EQ(std::memcmp(p2.data(), params.data(), params.size() * 4), 0);
  EXPECT_EQ(std::memcmp(m2.data(), momentum.data(), momentum.size() * 4), 0);
  EXPECT_EQ(got.at("step"), "1234");
  EXPECT_EQ(got.at("epoch"), "3");
  EXPECT_EQ(got.at("config"), meta.at("config"));
  EXPECT_EQ(got.at("squeeze.kind"), "checkpoint");
  EXPECT_EQ(got.at("squeeze.format_version"), "1");
  EXPECT_EQ(got.count("squeeze.crc32"), 1u);

  sq::SafetensorsFile f = sq::read_safetensors(p);
  ASSERT_EQ(f.tensors.size(), 2 * layout.tensors.size());
  const size_t n = layout.tensors.size();
  for (size_t i = 0; i < n; ++i) {
    EXPECT_EQ(f.tensors[i].name, layout.tensors[i].name);
    EXPECT_EQ(f.tensors[n + i].name, "momentum." + layout.tensors[i].name);
    EXPECT_EQ(f.tensors[n + i].shape, layout.tensors[i].shape);
  }
}

// ---- corruption --------------------------------------------------------------------------------

TEST_F(Formats, EveryTruncationIsRefused) {
  std::mt19937_64 rng(5);
  std::vector<float> a = random_values(rng, 6), b = random_values(rng, 3);
  const std::string src = path("full.safetensors");
  sq::write_safetensors(src, {{"a", {2, 3}, a.data()}, {"b", {3}, b.data()}}, {{"k", "v"}});
  Bytes raw = read_raw(src);
  ASSERT_GT(raw.size(), 60u);
  const std::string p = path("trunc.safetensors");
  for (size_t len = 0; len < raw.size(); ++len) {
    SCOPED_TRACE("prefix length " + std::to_string(len));
    write_raw(p, Bytes(raw.begin(), raw.begin() + static_cast<long>(len)));
    expect_error([&] { sq::read_safetensors(p); }, p, "");
  }
  write_raw(p, raw);
  EXPECT_NO_THROW(sq::read_safetensors(p));
  Bytes longer = raw;
  longer.push_back(0x42);
  write_raw(p, longer);
  expect_error([&] { sq::read_safetensors(p); }, p, "trailing");
  write_raw(p, {});
  expect_error([&] { sq::read_safetensors(p); }, p, "too short");
}

TEST_F(Formats, HeaderLengthTooLargeIsRefused) {
  const std::string p = path("len.safetensors");
  const std::string header = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  const Bytes four = {1, 2, 3, 4};
  write_raw(p, make_file(header, four));
  EXPECT_NO_THROW(sq::read_safetensors(p));
  write_raw(p, make_file(header, four, header.size() + 5));
  expect_error([&] { sq::read_safetensors(p); }, p, "exceeds");
  write_raw(p, make_file(header, four, ~0ull - 1));
  expect_error([&] { sq::read_safetensors(p); }, p, "exceeds");
  // Over the 100 MB limit, in a (sparse) file long enough to hold it.
  write_raw(p, make_file(header, four, 110ull * 1000 * 1000));
  fs::resize_file(p, 120ull * 1000 * 1000);
  expect_error([&] { sq::read_safetensors(p); }, p, "100 MB");
}

TEST_F(Formats, MalformedHeadersAreRefused) {
  struct Case {
    const char* what;
    std::string header;
    size_t data_bytes;
    const char* expect;
  };
  auto entry = [](const std::string& body) { return "{\"a\": {" + body + "}}"; };
  const std::string dt = R"("dtype": "F32", )";
  const std::string sh = R"("shape": [2], )";
  const std::string of = R"("data_offsets": [0, 8])";
  const std::vector<Case> cases = {
      {"empty header", "", 0, "not valid JSON"},
      {"bad JSON", R"({"a": {"dtype": "F32",)", 0, "not valid JSON"},
      {"trailing garbage", R"({} x)", 0, "not valid JSON"},
      {"invalid UTF-8", "{\"a\xff\": 1}", 0, "not valid JSON"},
      {"invalid UTF-8 shown escaped", "{\"a\xff\": 1}", 0, "\\xff"},
      {"header is an array", "[1, 2, 3]", 0, "not a JSON object"},
      {"header is a string", "\"hello\"", 0, "not a JSON object"},
      {"metadata not an object", R"({"__metadata__": ["a"]})", 0, "\"__metadata__\" is not an object"},
      {"metadata null", R"({"__metadata__": null})", 0, "\"__metadata__\" is not an object"},
      {"metadata value not a string", R"({"__metadata__": {"k": 1}})", 0, "is not a string"},
      {"entry not an object", R"({"a": [0, 8]})", 0, "entry is not an object"},
      {"missing dtype", entry(sh + of), 8, "missing \"dtype\""},
      {"missing shape", entry(dt + of), 8, "missing \"shape\""},
      {"missing data_offsets", entry(dt + R"("shape": [2])"), 8, "missing \"data_offsets\""},
      {"unknown field", entry(dt + sh + of + R"(, "extra": 1)"), 8, "unknown field"},
      {"dtype not a string", entry(R"("dtype": 4, )" + sh + of), 8, "\"dtype\" is not a string"},
      {"unknown dtype", entry(R"("dtype": "F8", )" + sh + of), 8, "unsupported dtype \"F8\""},
      {"unsupported dtype", entry(R"("dtype": "I32", )" + sh + of), 8, "unsupported dtype"},
      {"lowercase dtype", entry(R"("dtype": "f32", )" + sh + of), 8, "unsupported dtype"},
      {"shape not an array", entry(dt + R"("shape": 2, )" + of), 8, "\"shape\" is not an array"},
      {"fractional dim", entry(dt + R"("shape": [2.5], )" + of), 8, "non-integer"},
      {"string dim", entry(dt + R"("shape": ["2"], )" + of), 8, "non-integer"},
      {"negative dim", entry(dt + R"("shape": [-2, -1], )" + of), 8, "negative dimension"},
      {"huge dim", entry(dt + R"("shape": [18446744073709551615], )" + of), 8, "too large"},
      {"element count overflow",
       entry(dt + R"("shape": [4294967296, 4294967296, 16], )" + of), 8, "overflow"},
      {"byte count overflow", entry(dt + R"("shape": [4611686018427387905], )" + of), 8,
       "overflow"},
      {"offsets not an array", entry(dt + sh + R"("data_offsets": 8)"), 8, "data_offsets"},
      {"one offset", entry(dt + sh + R"("data_offsets": [8])"), 8, "data_offsets"},
      {"three offsets", entry(dt + sh + R"("data_offsets": [0, 8, 8])"), 8, "data_offsets"},
      {"negative offset", entry(dt + sh + R"("data_offsets": [-8, 0])"), 8, "data_offsets"},
      {"fractional offset", entry(dt + sh + R"("data_offsets": [0, 8.0])"), 8, "data_offsets"},
      {"reversed offsets", entry(dt + sh + R"("data_offsets": [8, 0])"), 8, "reversed"},
      {"offsets out of bounds", entry(dt + sh + R"("data_offsets": [8, 16])"), 8, "beyond"},
      {"offsets far out of bounds",
       entry(dt + sh + R"("data_offsets": [18446744073709551607, 18446744073709551615])"), 8,
       "beyond"},
      {"size mismatch", entry(dt + R"("shape": [3], )" + of), 8, "needs 12"},
      {"span larger than the tensor", entry(dt + R"("shape": [1], )" + of), 8, "needs 4"},
      {"size mismatch F64", entry(R"("dtype": "F64", )" + sh + of), 8, "needs 16"},
      {"overlap",
       R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
           "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
       12, "overlap"},
      {"same range twice",
       R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
           "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})",
       8, "overlap"},
      {"gap",
       R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
           "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}})",
       20, "gap"},
      {"gap at start", entry(dt + sh + R"("data_offsets": [4, 12])"), 12, "gap"},
      {"trailing data", entry(dt + sh + of), 12, "trailing"},
      {"data but no tensors", "{}", 4, "trailing"},
      {"duplicate tensor name",
       R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
           "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
       8, "duplicate tensor name \"a\""},
      {"duplicate metadata key", R"({"__metadata__": {"k": "1", "k": "2"}})", 0,
       "duplicate key \"k\""},
      {"duplicate field", entry(dt + R"("dtype": "F32", )" + sh + of), 8,
       "duplicate key \"dtype\""},
      {"malformed crc", R"({"__metadata__": {"squeeze.crc32": "XYZ"}})", 0, "malformed"},
      {"uppercase crc", R"({"__metadata__": {"squeeze.crc32": "DEADBEEF"}})", 0, "malformed"},
      {"empty-data crc", R"({"__metadata__": {"squeeze.crc32": "00000001"}})", 0, "CRC-32"},
      {"wrong crc", "{\"__metadata__\": {\"squeeze.crc32\": \"12345678\"}, " +
                        entry(dt + sh + of).substr(1), 8, "CRC-32"},
  };
  std::mt19937_64 rng(11);
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    SCOPED_TRACE(c.what);
    Bytes data(c.data_bytes);
    for (auto& b : data) b = static_cast<uint8_t>(rng() | 1);
    const std::string p = path("bad" + std::to_string(i) + ".safetensors");
    write_raw(p, make_file(c.header, data));
    expect_error([&] { sq::read_safetensors(p); }, p, c.expect);
  }
}

TEST_F(Formats, MalformedHeaderControlsAreValid) {
  // The well-formed versions of the cases above read fine, so the refusals are specific.
  const std::string p = path("ok.safetensors");
  Bytes data = {1, 2, 3, 4, 5, 6, 7, 8};
  write_raw(p, make_file(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", data));
  EXPECT_NO_THROW(sq::read_safetensors(p));
  std::string crc = hex8(crc32_bitwise(data.data(), data.size()));
  write_raw(p, make_file(R"({"__metadata__": {"squeeze.crc32": ")" + crc +
                             R"("}, "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})",
                         data));
  EXPECT_NO_THROW(sq::read_safetensors(p));
  write_raw(p, make_file("{}", {}));
  EXPECT_NO_THROW(sq::read_safetensors(p));
}

TEST_F(Formats, FlippedDataByteFailsCrc) {
  std::mt19937_64 rng(21);
  std::vector<float> a = random_values(rng, 12);
  const std::string src = path("src.safetensors");
  sq::write_safetensors(src, {{"a", {3, 4}, a.data()}}, {});
  Bytes raw = read_raw(src);
  const size_t data_start = raw.size() - 48;
  const std::string p = path("flipped.safetensors");
  for (size_t i = data_start; i < raw.size(); ++i) {
    SCOPED_TRACE("byte " + std::to_string(i));
    Bytes bad = raw;
    bad[i] ^= static_cast<uint8_t>(1u << (i % 8));
    write_raw(p, bad);
    expect_error([&] { sq::read_safetensors(p); }, p, "CRC-32");
  }
}

TEST_F(Formats, AnyFlippedByteNeverCrashes) {
  // A flip in the header may still be a valid file (a renamed tensor, an edited metadata value),
  // but the reader must either succeed or throw sq::Error, never crash or throw anything else.
  std::mt19937_64 rng(31);
  std::vector<float> a = random_values(rng, 6), b = random_values(rng, 2);
  const std::string src = path("src.safetensors");
  sq::write_safetensors(src, {{"w", {2, 3}, a.data()}, {"b", {2}, b.data()}}, {{"step", "10"}});
  Bytes raw = read_raw(src);
  const std::string p = path("flipped.safetensors");
  int refused = 0;
  for (size_t i = 0; i < raw.size(); ++i) {
    for (uint8_t mask : {0x01, 0x20, 0x80}) {
      Bytes bad = raw;
      bad[i] ^= mask;
      write_raw(p, bad);
      try {
        sq::read_safetensors(p);
      } catch (const sq::Error& e) {
        ++refused;
        EXPECT_EQ(std::string(e.what()).rfind(p + ": ", 0), 0u) << e.what();
      } catch (const std::exception& e) {
        ADD_FAILURE() << "byte " << i << ": non-sq exception " << e.what();
      }
    }
  }
  EXPECT_GT(refused, static_cast<int>(raw.size()));  // most flips are caught
}

// ---- wrong kind / wrong layout -----------------------------------------------------------------

TEST_F(Formats, LoadCheckpointRefusesOtherFiles) {
  std::mt19937_64 rng(41);
  sq::ParamLayout layout = small_layout();
  std::vector<float> params = random_values(rng, layout.total);
  std::vector<float> p2(layout.total), m2(layout.total);

  const std::string w = path("weights.safetensors");
  sq::export_weights(w, layout, params.data());
  expect_error([&] { sq::load_checkpoint(w, layout, p2.data(), m2.data()); }, w,
               "not a squeeze checkpoint (squeeze.kind is \"weights\")");

  std::vector<sq::TensorRef> refs;
  for (const auto& s : layout.tensors) refs.push_back({s.name, s.shape, params.data() + s.offset});
  for (const auto& s : layout.tensors)
    refs.push_back({"momentum." + s.name, s.shape, params.data() + s.offset});
  const std::string plain = path("plain.safetensors");
  sq::write_safetensors(plain, refs, {});
  expect_error([&] { sq::load_checkpoint(plain, layout, p2.data(), m2.data()); }, plain,
               "no squeeze.kind");

  const std::string v2 = path("v2.safetensors");
  sq::write_safetensors(v2, refs, {{"squeeze.kind", "checkpoint"}, {"squeeze.format_version", "2"}});
  expect_error([&] { sq::load_checkpoint(v2, layout, p2.data(), m2.data()); }, v2,
               "format_version \"2\"");
  const std::string v0 = path("v0.safetensors");
  sq::write_safetensors(v0, refs, {{"squeeze.kind", "checkpoint"}});
  expect_error([&] { sq::load_checkpoint(v0, layout, p2.data(), m2.data()); }, v0,
               "format_version");

  // And the same tensors with the right metadata load.
  sq::write_safetensors(v2, refs, {{"squeeze.kind", "checkpoint"}, {"squeeze.format_version", "1"}});
  EXPECT_NO_THROW(sq::load_checkpoint(v2, layout, p2.data(), m2.data()));

  // A checkpoint is not a weights file.
  const std::string c = path("c.safetensors");
  sq::save_checkpoint(c, layout, params.data(), params.data(), {});
  expect_error([&] { sq::import_weights(c, layout, p2.data()); }, c,
               "unexpected tensor \"momentum.features.0.weight\"");
}

TEST_F(Formats, ImportWeightsRefusesWrongLayout) {
  std::mt19937_64 rng(51);
  sq::ParamLayout layout = small_layout();
  std::vector<float> params = random_values(rng, layout.total);
  const std::string p = path("w.safetensors");
  sq::export_weights(p, layout, params.data());

  sq::ParamLayout fewer;  // the file has a tensor this model lacks
  for (const auto& s : layout.tensors)
    if (s.name != "classifier.1.bias") fewer.add(s.name, s.shape);
  std::vector<float> buf(layout.total + 64, 3.0f);
  expect_error([&] { sq::import_weights(p, fewer, buf.data()); }, p,
               "unexpected tensor \"classifier.1.bias\" (shape [10])");

  sq::ParamLayout more = layout;  // the model has a tensor the file lacks
  more.add("classifier.2.weight", {5, 10});
  expect_error([&] { sq::import_weights(p, more, buf.data()); }, p,
               "missing tensor \"classifier.2.weight\" (shape [5, 10]");

  sq::ParamLayout reshaped;  // same names, one shape differs
  for (const auto& s : layout.tensors)
    reshaped.add(s.name, s.name == "features.3.squeeze.weight" ? std::vector<int64_t>{4, 8, 3, 3}
                                                               : s.shape);
  expect_error([&] { sq::import_weights(p, reshaped, buf.data()); }, p,
               "tensor \"features.3.squeeze.weight\" has shape [4, 8, 1, 1] in the file but "
               "[4, 8, 3, 3] in the model");
  // Refused imports leave the destination untouched.
  for (float v : buf) ASSERT_EQ(v, 3.0f);
}

TEST_F(Formats, LoadCheckpointRefusesWrongLayout) {
  std::mt19937_64 rng(61);
  sq::ParamLayout layout = small_layout();
  std::vector<float> params = random_values(rng, layout.total);
  std::vector<float> momentum = random_values(rng, layout.total);
  const std::string p = path("ckpt.safetensors");
  sq::save_checkpoint(p, layout, params.data(), momentum.data(), {{"step", "5"}});
  std::vector<float> p2(layout.total + 64, 3.0f), m2(layout.total + 64, 3.0f);

  sq::ParamLayout fewer;
  for (const auto& s : layout.tensors)
    if (s.name != "features.0.bias") fewer.add(s.name, s.shape);
  expect_error([&] { sq::load_checkpoint(p, fewer, p2.data(), m2.data()); }, p,
               "unexpected tensor \"features.0.bias\"");

  sq::ParamLayout more = layout;
  more.add("extra.weight", {3});
  expect_error([&] { sq::load_checkpoint(p, more, p2.data(), m2.data()); }, p,
               "missing tensor \"extra.weight\"");

  sq::ParamLayout reshaped;
  for (const auto& s : layout.tensors)
    reshaped.add(s.name, s.name == "classifier.1.bias" ? std::vector<int64_t>{10, 1} : s.shape);
  expect_error([&] { sq::load_checkpoint(p, reshaped, p2.data(), m2.data()); }, p,
               "tensor \"classifier.1.bias\" has shape [10] in the file but [10, 1] in the model");

  // A checkpoint missing one momentum tensor.
  std::vector<sq::TensorRef> refs;
  for (const auto& s : layout.tensors) refs.push_back({s.name, s.shape, params.data() + s.offset});
  for (const auto& s : layout.tensors)
    if (s.name != "classifier.1.weight")
      refs.push_back({"momentum." + s.name, s.shape, momentum.data() + s.offset});
  const std::string q = path("partial.safetensors");
  sq::write_safetensors(q, refs, {{"squeeze.kind", "checkpoint"}, {"squeeze.format_version", "1"}});
  expect_error([&] { sq::load_checkpoint(q, layout, p2.data(), m2.data()); }, q,
               "missing tensor \"momentum.classifier.1.weight\"");
  for (float v : p2) ASSERT_EQ(v, 3.0f);
  for (float v : m2) ASSERT_EQ(v, 3.0f);
}

TEST_F(Formats, WriterRefusesBadInput) {
  float x[4] = {1, 2, 3, 4};
  const std::string p = path("bad.safetensors");
  expect_error([&] { sq::write_safetensors(p, {{"a", {1}, x}, {"a", {1}, x + 1}}, {}); }, p,
               "duplicate tensor name \"a\"");
  expect_error([&] { sq::write_safetensors(p, {{"__metadata__", {1}, x}}, {}); }, p,
               "__metadata__");
  expect_error([&] { sq::write_safetensors(p, {{"a", {-1, 2}, x}}, {}); }, p, "negative");
  expect_error([&] { sq::write_safetensors(p, {{"a", {2}, nullptr}}, {}); }, p, "no data");
  expect_error([&] { sq::write_safetensors(p, {{"bad\xff", {1}, x}}, {}); }, p, "header");
  EXPECT_TRUE(listing().empty());
}

TEST_F(Formats, ReadRefusesMissingFileAndDirectory) {
  const std::string p = path("nope.safetensors");
  expect_error([&] { sq::read_safetensors(p); }, p, "No such file");
  expect_error([&] { sq::read_safetensors(dir_); }, dir_, "directory");
}

// ---- atomic write ------------------------------------------------------------------------------

TEST_F(Formats, AtomicWriteReplacesFileAndLeavesNoTemp) {
  const std::string p = path("f.bin");
  const std::string one = "first version", two = "second, longer version of the file";
  sq::atomic_write_file(p, one.data(), one.size());
  Bytes got = read_raw(p);
  EXPECT_EQ(std::string(got.begin(), got.end()), one);
  sq::atomic_write_file(p, two.data(), two.size());
  got = read_raw(p);
  EXPECT_EQ(std::string(got.begin(), got.end()), two);
  sq::atomic_write_file(p, nullptr, 0);
  EXPECT_EQ(fs::file_size(p), 0u);
  EXPECT_EQ(listing(), std::vector<std::string>{"f.bin"});
  // Mode as a plain create would give it, not mkstemp's 0600.
  mode_t mask = ::umask(022);
  ::umask(mask);
  struct stat st;
  ASSERT_EQ(::stat(p.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0666 & ~mask);
}

TEST_F(Formats, AtomicWriteRelativePath) {
  char cwd[4096];
  ASSERT_NE(::getcwd(cwd, sizeof cwd), nullptr);
  ASSERT_EQ(::chdir(dir_.c_str()), 0);
  const std::string s = "relative";
  EXPECT_NO_THROW(sq::atomic_write_file("rel.bin", s.data(), s.size()));
  ASSERT_EQ(::chdir(cwd), 0);
  EXPECT_EQ(listing(), std::vector<std::string>{"rel.bin"});
}

TEST_F(Formats, AtomicWriteOverDirectoryFailsCleanly) {
  const std::string p = path("target");
  ASSERT_EQ(::mkdir(p.c_str(), 0755), 0);
  const std::string s = "data";
  expect_error([&] { sq::atomic_write_file(p, s.data(), s.size()); }, p, "Is a directory");
  EXPECT_TRUE(fs::is_directory(p));
  EXPECT_EQ(listing(), std::vector<std::string>{"target"});
}

TEST_F(Formats, AtomicWriteIntoMissingDirectoryFails) {
  const std::string p = path("no/such/dir/f.bin");
  const std::string s = "data";
  expect_error([&] { sq::atomic_write_file(p, s.data(), s.size()); }, p,
               "No such file or directory");
  EXPECT_TRUE(listing().empty());
}

// Restores RLIMIT_FSIZE and SIGXFSZ whatever happens.
struct FileSizeLimit {
  struct rlimit old;
  void (*old_handler)(int);
  explicit FileSizeLimit(rlim_t bytes) {
    old_handler = ::signal(SIGXFSZ, SIG_IGN);
    ::getrlimit(RLIMIT_FSIZE, &old);
    struct rlimit lim = old;
    lim.rlim_cur = bytes;
    ::setrlimit(RLIMIT_FSIZE, &lim);
  }
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &old);
    ::signal(SIGXFSZ, old_handler);
  }
};

TEST_F(Formats, FailedWriteKeepsPreviousFile) {
  // A write that fails part way (here: over RLIMIT_FSIZE, which binds root too) must leave the
  // previous file as it was and no temporary behind.
  std::mt19937_64 rng(71);
  sq::ParamLayout layout = small_layout();
  std::vector<float> params = random_values(rng, layout.total);
  std::vector<float> momentum = random_values(rng, layout.total);
  const std::string p = path("ckpt.safetensors");
  sq::save_checkpoint(p, layout, params.data(), momentum.data(), {{"step", "1"}});
  const Bytes before = read_raw(p);

  std::vector<float> big = random_values(rng, 1 << 18);  // 1 MB
  {
    FileSizeLimit limit(512 * 1024);
    expect_error([&] { sq::atomic_write_file(p, big.data(), big.size() * 4); }, p,
                 "File too large");
    expect_error(
        [&] {
          sq::write_safetensors(p, {{"big", {static_cast<int64_t>(big.size())}, big.data()}}, {});
        },
        p, "File too large");
  }
  EXPECT_EQ(read_raw(p), before);
  EXPECT_EQ(listing(), std::vector<std::string>{"ckpt.safetensors"});
  std::vector<float> p2(layout.total), m2(layout.total);
  sq::Metadata meta = sq::load_checkpoint(p, layout, p2.data(), m2.data());
  EXPECT_EQ(meta.at("step"), "1");
  EXPECT_EQ(p2, params);
}

TEST_F(Formats, SignalDuringWriteRemovesTempAndKeepsPreviousFile) {
  // SIGXFSZ, raised by the kernel at RLIMIT_FSIZE, stands in for a Ctrl-C or a scheduler's
  // SIGTERM: it arrives mid-write and its default action kills the process.
  const std::string p = path("ckpt.safetensors");
  const std::string old = "previous checkpoint";
  // This write also installs the handlers (if no earlier one did); the child inherits them.
  sq::atomic_write_file(p, old.data(), old.size());
  // Code that saves and restores a handler through signal() reinstalls ours without SA_SIGINFO
  // (FailedWriteKeepsPreviousFile's guard does): the next write must not then chain to itself.
  ::signal(SIGXFSZ, ::signal(SIGXFSZ, SIG_IGN));
  sq::atomic_write_file(p, old.data(), old.size());
  const std::vector<uint8_t> big(1 << 20, 0x5a);
  std::fflush(nullptr);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0) << std::strerror(errno);
  if (child == 0) {  // no gtest code here, and _exit: the parent's fixture must not run twice
    struct rlimit no_core = {0, 0}, lim = {4096, 4096};
    ::setrlimit(RLIMIT_CORE, &no_core);  // SIGXFSZ's default action dumps core
    ::setrlimit(RLIMIT_FSIZE, &lim);
    try {
      sq::atomic_write_file(p, big.data(), big.size());
    } catch (...) {
      ::_exit(2);
    }
    ::_exit(0);  // not reached: the signal kills the child
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child) << std::strerror(errno);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the child exited with status " << WEXITSTATUS(status);
  EXPECT_EQ(WTERMSIG(status), SIGXFSZ) << strsignal(WTERMSIG(status));
  Bytes got = read_raw(p);
  EXPECT_EQ(std::string(got.begin(), got.end()), old);
  for (const std::string& name : listing())
    EXPECT_EQ(name.find(".tmp."), std::string::npos) << "temporary left behind: " << name;
}

namespace {
volatile sig_atomic_t g_own_handler_ran = 0;
void own_handler(int) { g_own_handler_ran = 1; }
}  // namespace

// A program's own handler (squeeze train's stop request) is chained to, not overridden: a SIGTERM
// mid-write runs it and the write completes (a checkpoint written as training stops is kept).
// Removing the temporary there instead made the write fail at its rename.
TEST_F(Formats, SignalDuringWriteWithAProgramsHandlerLetsTheWriteComplete) {
  const std::string p = path("ckpt.safetensors");
  const std::vector<uint8_t> big(size_t(256) << 20, 0x5a);  // long enough to be caught mid-write
  std::fflush(nullptr);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0) << std::strerror(errno);
  if (child == 0) {  // exit codes: 0 as expected, 2 the write threw, 3 no temporary seen, 4 no handler run
    struct sigaction own;
    std::memset(&own, 0, sizeof own);
    own.sa_handler = own_handler;
    sigemptyset(&own.sa_mask);
    own.sa_flags = SA_RESTART;
    ::sigaction(SIGTERM, &own, nullptr);  // after any the parent's writes installed: replaced
    bool saw_temp = false;
    // Named by host and pid, so that only this host's next write judges whether it is stale.
    const std::string tmp_prefix =
        "ckpt.safetensors.tmp." + sq::atomic_write_host() + "." + std::to_string(::getpid()) + ".";
    std::thread signaller([&] {
      for (int i = 0; i < 2000000 && !saw_temp; ++i)
        for (const std::string& name : listing())
          if (name.compare(0, tmp_prefix.size(), tmp_prefix) == 0) saw_temp = true;
      ::kill(::getpid(), SIGTERM);
    });
    int code = 0;
    try {
      sq::atomic_write_file(p, big.data(), big.size());
    } catch (...) {
      code = 2;
    }
    signaller.join();
    if (code == 0 && !saw_temp) code = 3;
    if (code == 0 && !g_own_handler_ran) code = 4;
    ::_exit(code);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child) << std::strerror(errno);
  ASSERT_TRUE(WIFEXITED(status)) << strsignal(WTERMSIG(status));
  ASSERT_EQ(WEXITSTATUS(status), 0) << "2: the write threw, 3: no temporary seen, 4: no handler ran";
  struct stat st;
  ASSERT_EQ(::stat(p.c_str(), &st), 0);
  EXPECT_EQ(size_t(st.st_size), big.size());
  for (const std::string& name : listing())
    EXPECT_EQ(name.find(".tmp."), std::string::npos) << "temporary left behind: " << name;
}

namespace {
void abandon_and_exit(int) {
  sq::abandon_atomic_write();
  ::_exit(9);
}
}  // namespace

// A handler that ends the process mid-write (squeeze train's, at a second stop signal) removes
// the temporary through abandon_atomic_write first; the previous file stays whole.
TEST_F(Formats, AHandlerEndingTheProcessMidWriteLeavesNoTemp) {
  const std::string p = path("ckpt.safetensors");
  const std::string old = "previous checkpoint";
  sq::atomic_write_file(p, old.data(), old.size());
  const std::vector<uint8_t> big(size_t(256) << 20, 0x5a);
  std::fflush(nullptr);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0) << std::strerror(errno);
  if (child == 0) {
    struct sigaction own;
    std::memset(&own, 0, sizeof own);
    own.sa_handler = abandon_and_exit;
    sigemptyset(&own.sa_mask);
    ::sigaction(SIGTERM, &own, nullptr);
    std::thread signaller([&] {
      bool saw_temp = false;
      for (int i = 0; i < 2000000 && !saw_temp; ++i)
        for (const std::string& name : listing())
          if (name.find(".tmp.") != std::string::npos) saw_temp = true;
      if (!saw_temp) ::_exit(3);
      ::kill(::getpid(), SIGTERM);
      for (;;) ::pause();
    });
    try {
      sq::atomic_write_file(p, big.data(), big.size());
    } catch (...) {
      ::_exit(2);
    }
    ::_exit(0);  // the write finished before the signal came: not what this test needs
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child) << std::strerror(errno);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 9) << "0: the write finished first, 2: it threw, 3: no temporary seen";
  Bytes got = read_raw(p);
  EXPECT_EQ(std::string(got.begin(), got.end()), old);
  for (const std::string& name : listing())
    EXPECT_EQ(name.find(".tmp."), std::string::npos) << "temporary left behind: " << name;
}

TEST_F(Formats, AtomicWriteRemovesTempsOfDeadProcessesOnly) {
  // What SIGKILL or a power loss leaves is removed by the next write of the same file.
  const pid_t dead = ::fork();
  ASSERT_GE(dead, 0) << std::strerror(errno);
  if (dead == 0) ::_exit(0);
  ASSERT_EQ(::waitpid(dead, nullptr, 0), dead);
  const std::string host = sq::atomic_write_host();
  ASSERT_FALSE(host.empty());
  ASSERT_EQ(host.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"),
            std::string::npos) << host;
  const std::string d = std::to_string(dead), self = std::to_string(::getpid());
  const std::string w = "w.safetensors.tmp." + host + ".";
  const std::vector<std::string> kept = {
      w + self + ".ghijkl",                          // this process: alive
      w + "1.mnopqr",                                // init: alive
      "other.tmp." + host + "." + d + ".abcdef",     // another file's
      "x" + w + d + ".abcdef",                       // another file's, ending in the same name
      w + d + ".abcdefg",                            // not mkstemp's six characters
      w + d + ".abc-ef",
      w + d + "x.abcdef",                            // not a pid
      w + ".abcdef",
      "w.safetensors.tmp." + host + "x." + d + ".abcdef",  // another host's: its pid is not ours
      "w.safetensors.tmp.x" + host + "." + d + ".abcdef",
      "w.safetensors.tmp." + d + ".abcdef",          // no host (written before hosts were named)
  };
  for (const std::string& name : kept) write_raw(path(name), {1, 2, 3});
  write_raw(path(w + d + ".abcdef"), {4, 5, 6});
  const std::string s = "new bytes";
  sq::atomic_write_file(path("w.safetensors"), s.data(), s.size());
  Bytes got = read_raw(path("w.safetensors"));
  EXPECT_EQ(std::string(got.begin(), got.end()), s);
  std::vector<std::string> want = kept;
  want.push_back("w.safetensors");
  std::sort(want.begin(), want.end());
  EXPECT_EQ(listing(), want);
}

TEST_F(Formats, WriteIntoReadOnlyDirectoryKeepsPreviousFile) {
  if (::geteuid() == 0) GTEST_SKIP() << "directory permissions do not bind root";
  const std::string sub = path("ro");
  ASSERT_EQ(::mkdir(sub.c_str(), 0755), 0);
  const std::string p = sub + "/f.bin";
  const std::string one = "old", two = "new";
  sq::atomic_write_file(p, one.data(), one.size());
  ASSERT_EQ(::chmod(sub.c_str(), 0555), 0);
  expect_error([&] { sq::atomic_write_file(p, two.data(), two.size()); }, p, "Permission denied");
  ASSERT_EQ(::chmod(sub.c_str(), 0755), 0);
  Bytes got = read_raw(p);
  EXPECT_EQ(std::string(got.begin(), got.end()), one);
  EXPECT_EQ(listing(sub), std::vector<std::string>{"f.bin"});
}

}  // namespace
