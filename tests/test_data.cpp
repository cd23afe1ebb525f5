// Data layer: IDX and CIFAR-10 readers (round trips and every kind of malformed input), the real
// Fashion-MNIST files, normalisation, epoch order and batch assembly with augmentation.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "core/data.h"
#include "core/error.h"

namespace sq {
namespace {

using Bytes = std::vector<uint8_t>;

// Directories made by the tests, removed when the whole run ends.
std::vector<std::string>& temp_dirs() {
  static std::vector<std::string> dirs;
  return dirs;
}
struct RemoveTempDirs : ::testing::Environment {
  void TearDown() override {
    for (const std::string& d : temp_dirs()) {
      std::error_code ec;
      std::filesystem::remove_all(d, ec);
    }
  }
};
[[maybe_unused]] const auto* const kRemoveTempDirs = ::testing::AddGlobalTestEnvironment(new RemoveTempDirs);

// A fresh directory per test under GoogleTest's temp dir.
std::string make_temp_dir() {
  std::string base = ::testing::TempDir();
  if (base.empty() || base.back() != '/') base += '/';
  std::string tmpl = base + "squeeze_data_XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  const char* d = mkdtemp(buf.data());
  if (!d) throw std::runtime_error("mkdtemp failed for " + tmpl);
  temp_dirs().push_back(d);
  return d;
}

void write_raw(const std::string& path, const Bytes& b) {
  FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr) << path;
  if (!b.empty()) {
    ASSERT_EQ(std::fwrite(b.data(), 1, b.size(), f), b.size());
  }
  std::fclose(f);
}

void write_gz(const std::string& path, const Bytes& b) {
  gzFile g = gzopen(path.c_str(), "wb");
  ASSERT_NE(g, nullptr) << path;
  if (!b.empty()) {
    ASSERT_EQ(gzwrite(g, b.data(), unsigned(b.size())), int(b.size()));
  }
  gzclose(g);
}

// Writes gz if the name ends in .gz, raw otherwise.
void write_file(const std::string& path, const Bytes& b) {
  if (path.size() > 3 && path.compare(path.size() - 3, 3, ".gz") == 0)
    write_gz(path, b);
  else
    write_raw(path, b);
}

Bytes read_raw(const std::string& path) {
  Bytes b;
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return b;
  int c;
  while ((c = std::fgetc(f)) != EOF) b.push_back(uint8_t(c));
  std::fclose(f);
  return b;
}

void put_be32(Bytes& b, uint32_t v) {
  b.push_back(uint8_t(v >> 24));
  b.push_back(uint8_t(v >> 16));
  b.push_back(uint8_t(v >> 8));
  b.push_back(uint8_t(v));
}

Bytes idx_images(uint32_t n, uint32_t h, uint32_t w, const Bytes& pixels, uint32_t magic = 0x803) {
  Bytes b;
  put_be32(b, magic);
  put_be32(b, n);
  put_be32(b, h);
  put_be32(b, w);
  b.insert(b.end(), pixels.begin(), pixels.end());
  return b;
}

Bytes idx_labels(uint32_t n, const Bytes& labels, uint32_t magic = 0x801) {
  Bytes b;
  put_be32(b, magic);
  put_be32(b, n);
  b.insert(b.end(), labels.begin(), labels.end());
  return b;
}

Bytes pattern(size_t n, uint32_t salt = 0) {
  Bytes p(n);
  for (size_t i = 0; i < n; ++i) p[i] = uint8_t((i * 37 + salt * 11 + 5) % 256);
  return p;
}

// Runs f, which must throw sq::Error; returns its message.
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("<not sq::Error> ") + e.what();
  }
  return "<no error>";
}

#define EXPECT_FAULT(msg, path, word)                                                  \
  do {                                                                                 \
    const std::string m_ = (msg);                                                      \
    EXPECT_NE(m_.find(path), std::string::npos) << "message lacks path: " << m_;       \
    EXPECT_NE(m_.find(word), std::string::npos) << "message lacks '" << word << "': " << m_; \
    EXPECT_EQ(m_.find('\n'), std::string::npos) << "message is not one line: " << m_; \
  } while (0)

// ---------------------------------------------------------------------------------------------
// IDX round trips

class IdxRoundTrip : public ::testing::TestWithParam<std::pair<bool, bool>> {};

TEST_P(IdxRoundTrip, ReadsBackExactly) {
  const auto [img_gz, lab_gz] = GetParam();
  const std::string dir = make_temp_dir();
  const std::string ip = dir + "/img" + (img_gz ? ".gz" : ""), lp = dir + "/lab" + (lab_gz ? ".gz" : "");
  const Bytes pixels = pattern(3 * 4 * 5);
  const Bytes labels = {7, 0, 9};
  write_file(ip, idx_images(3, 4, 5, pixels));
  write_file(lp, idx_labels(3, labels));
  const Dataset d = load_idx(ip, lp, 10, "tiny/train");
  EXPECT_EQ(d.name, "tiny/train");
  EXPECT_EQ(d.n, 3);
  EXPECT_EQ(d.c, 1);
  EXPECT_EQ(d.h, 4);
  EXPECT_EQ(d.w, 5);
  EXPECT_EQ(d.num_classes, 10);
  EXPECT_EQ(d.images, pixels);
  EXPECT_EQ(d.labels, (std::vector<int32_t>{7, 0, 9}));
}

INSTANTIATE_TEST_SUITE_P(GzOrRaw, IdxRoundTrip,
                         ::testing::Values(std::make_pair(false, false), std::make_pair(true, true),
                                           std::make_pair(true, false), std::make_pair(false, true)));

TEST(Idx, LargerGzipSpansManyReads) {
  // More than one gzread buffer and more than one growth step of the reader's vector.
  const std::string dir = make_temp_dir();
  const uint32_t n = 700, h = 150, w = 170;  // 17.85 MB > the 16 MiB first chunk
  Bytes pixels(size_t(n) * h * w);
  uint64_t s = 1;
  for (auto& p : pixels) p = uint8_t((s = s * 6364136223846793005ull + 1442695040888963407ull) >> 56);
  Bytes labels(n);
  for (uint32_t i = 0; i < n; ++i) labels[i] = uint8_t(i % 10);
  write_gz(dir + "/i.gz", idx_images(n, h, w, pixels));
  write_gz(dir + "/l.gz", idx_labels(n, labels));
  const Dataset d = load_idx(dir + "/i.gz", dir + "/l.gz", 10, "big");
  ASSERT_EQ(d.n, n);
  EXPECT_TRUE(d.images == pixels);
  EXPECT_EQ(d.labels[699], 9);
}

// ---------------------------------------------------------------------------------------------
// Malformed IDX: each fault is a one-line sq::Error naming the file and the fault.

struct Malformed {
  const char* name;
  bool gz;
  Bytes images, labels;
  bool fault_in_labels;  // which path the message must name
  const char* word;
};

void PrintTo(const Malformed& m, std::ostream* os) { *os << m.name << (m.gz ? " (gz)" : " (raw)"); }

class IdxMalformed : public ::testing::TestWithParam<Malformed> {};

TEST_P(IdxMalformed, ThrowsNamingPathAndFault) {
  const Malformed& m = GetParam();
  const std::string dir = make_temp_dir();
  const std::string sfx = m.gz ? ".gz" : "";
  const std::string ip = dir + "/images-idx3-ubyte" + sfx, lp = dir + "/labels-idx1-ubyte" + sfx;
  write_file(ip, m.images);
  write_file(lp, m.labels);
  const std::string msg = error_of([&] { load_idx(ip, lp, 10, "bad"); });
  EXPECT_FAULT(msg, m.fault_in_labels ? lp : ip, m.word);
}

Bytes good_px() { return pattern(2 * 3 * 3); }
Bytes drop_last(Bytes b) { b.pop_back(); return b; }
Bytes plus(Bytes b, size_t k) { b.insert(b.end(), k, 0); return b; }
Bytes head_only(Bytes b, size_t k) { b.resize(k); return b; }

std::vector<Malformed> malformed_cases() {
  const Bytes img = idx_images(2, 3, 3, good_px()), lab = idx_labels(2, {1, 2});
  std::vector<Malformed> v;
  for (bool gz : {false, true}) {
    v.push_back({"magic_images", gz, idx_images(2, 3, 3, good_px(), 0x801), lab, false, "magic"});
    v.push_back({"magic_labels", gz, img, idx_labels(2, {1, 2}, 0x803), true, "magic"});
    v.push_back({"magic_float", gz, idx_images(2, 3, 3, good_px(), 0xD03), lab, false, "magic"});
    v.push_back({"magic_short", gz, head_only(img, 2), lab, false, "truncated"});
    v.push_back({"header_images", gz, head_only(img, 10), lab, false, "truncated header"});
    v.push_back({"header_labels", gz, img, head_only(lab, 6), true, "truncated header"});
    v.push_back({"pixels_short", gz, drop_last(img), lab, false, "truncated data"});
    v.push_back({"pixels_none", gz, head_only(img, 16), lab, false, "truncated data"});
    v.push_back({"labels_short", gz, img, drop_last(lab), true, "truncated data"});
    v.push_back({"pixels_trailing", gz, plus(img, 1), lab, false, "trailing"});
    v.push_back({"labels_trailing", gz, img, plus(lab, 3), true, "trailing"});
    v.push_back({"count_mismatch", gz, img, idx_labels(3, {1, 2, 3}), false, "count mismatch"});
    v.push_back({"label_range", gz, img, idx_labels(2, {1, 10}), true, "out of range"});
    v.push_back({"label_255", gz, img, idx_labels(2, {255, 0}), true, "out of range"});
    v.push_back({"zero_n", gz, idx_images(0, 3, 3, {}), idx_labels(0, {}), false, "zero"});
    v.push_back({"zero_h", gz, idx_images(2, 0, 3, {}), lab, false, "zero"});
    v.push_back({"zero_labels", gz, img, idx_labels(0, {}), true, "zero"});
    v.push_back({"absurd_side", gz, idx_images(2, 5000, 3, {}), lab, false, "absurd"});
    v.push_back({"absurd_side_max", gz, idx_images(2, 3, 0xFFFFFFFFu, {}), lab, false, "absurd"});
    // 200000 * 4096 * 4096 elements: far beyond 2^31; must fail from the header alone.
    v.push_back({"absurd_total", gz, idx_images(200000, 4096, 4096, {}), lab, false, "absurd"});
    // Within bounds (2^31 exactly) but the file is tiny: must fail as truncated, without
    // allocating 2 GiB for a gzip stream of a few bytes.
    v.push_back({"huge_claim_tiny_file", gz, idx_images(128, 4096, 4096, good_px()), lab, false, "truncated"});
  }
  return v;
}

INSTANTIATE_TEST_SUITE_P(Faults, IdxMalformed, ::testing::ValuesIn(malformed_cases()),
                         [](const ::testing::TestParamInfo<Malformed>& i) {
                           return std::string(i.param.name) + (i.param.gz ? "_gz" : "_raw");
                         });

TEST(IdxFaults, MissingFileNamesPathAndReason) {
  const std::string dir = make_temp_dir();
  write_raw(dir + "/lab", idx_labels(1, {0}));
  for (const std::string& ip : {dir + "/nope", dir + "/nope.gz"}) {
    const std::string msg = error_of([&] { load_idx(ip, dir + "/lab", 10, "x"); });
    EXPECT_FAULT(msg, ip, std::strerror(ENOENT));
  }
}

TEST(IdxFaults, DirectoryIsNotAFile) {
  const std::string dir = make_temp_dir();
  write_raw(dir + "/lab", idx_labels(1, {0}));
  EXPECT_FAULT(error_of([&] { load_idx(dir, dir + "/lab", 10, "x"); }), dir, "directory");
}

TEST(IdxFaults, CorruptGzipStream) {
  const std::string dir = make_temp_dir();
  const std::string ip = dir + "/img.gz", lp = dir + "/lab.gz";
  write_gz(lp, idx_labels(50, Bytes(50, 3)));
  write_gz(ip, idx_images(50, 8, 8, pattern(50 * 64)));
  Bytes z = read_raw(ip);
  ASSERT_GT(z.size(), 40u);
  // Damage the deflate data in the middle (the 10-byte header and 8-byte trailer stay intact).
  for (size_t k = 12; k < z.size() - 8; k += 3) z[k] ^= 0x5A;
  write_raw(ip, z);
  EXPECT_FAULT(error_of([&] { load_idx(ip, lp, 10, "x"); }), ip, "gzip");
}

TEST(IdxFaults, GzipChecksumMismatch) {
  // Valid deflate data but a wrong CRC in the trailer: caught because the reader reads to the end.
  const std::string dir = make_temp_dir();
  const std::string ip = dir + "/img.gz", lp = dir + "/lab.gz";
  write_gz(lp, idx_labels(2, {1, 2}));
  write_gz(ip, idx_images(2, 3, 3, good_px()));
  Bytes z = read_raw(ip);
  z[z.size() - 8] ^= 0xFF;  // first CRC32 byte
  write_raw(ip, z);
  EXPECT_FAULT(error_of([&] { load_idx(ip, lp, 10, "x"); }), ip, "gzip");
}

TEST(IdxFaults, TruncatedGzipStream) {
  const std::string dir = make_temp_dir();
  const std::string ip = dir + "/img.gz", lp = dir + "/lab.gz";
  write_gz(lp, idx_labels(50, Bytes(50, 3)));
  write_gz(ip, idx_images(50, 8, 8, pattern(50 * 64)));
  Bytes z = read_raw(ip);
  z.resize(z.size() / 2);
  write_raw(ip, z);
  const std::string msg = error_of([&] { load_idx(ip, lp, 10, "x"); });
  EXPECT_FAULT(msg, ip, "gzip");
}

Bytes gz_bytes(const Bytes& b) {
  const std::string dir = make_temp_dir();
  write_gz(dir + "/t.gz", b);
  return read_raw(dir + "/t.gz");
}

TEST(IdxFaults, TrailingGarbageAfterGzipStream) {
  const std::string dir = make_temp_dir();
  const std::string ip = dir + "/img.gz", lp = dir + "/lab.gz";
  write_gz(ip, idx_images(2, 3, 3, good_px()));
  Bytes z = gz_bytes(idx_labels(2, {1, 2}));
  z.insert(z.end(), {'j', 'u', 'n', 'k'});
  write_raw(lp, z);
  EXPECT_FAULT(error_of([&] { load_idx(ip, lp, 10, "x"); }), lp, "trailing garbage");
}

TEST(IdxFaults, RawDataUnderGzName) {
  const std::string dir = make_temp_dir();
  const std::string ip = dir + "/img.gz", lp = dir + "/lab.gz";
  write_raw(ip, idx_images(2, 3, 3, good_px()));
  write_gz(lp, idx_labels(2, {1, 2}));
  EXPECT_FAULT(error_of([&] { load_idx(ip, lp, 10, "x"); }), ip, "not a gzip");
}

TEST(Idx, ConcatenatedGzipMembers) {
  // `cat a.gz b.gz` is a valid gzip file whose content is the concatenation.
  const std::string dir = make_temp_dir();
  const std::string ip = dir + "/img.gz", lp = dir + "/lab.gz";
  const Bytes img = idx_images(2, 3, 3, good_px());
  Bytes z = gz_bytes(Bytes(img.begin(), img.begin() + 7));
  const Bytes z2 = gz_bytes(Bytes(img.begin() + 7, img.end()));
  z.insert(z.end(), z2.begin(), z2.end());
  write_raw(ip, z);
  write_gz(lp, idx_labels(2, {1, 2}));
  const Dataset d = load_idx(ip, lp, 10, "x");
  EXPECT_EQ(d.images, good_px());
}

// ---------------------------------------------------------------------------------------------
// CIFAR-10 binary

Bytes cifar_records(const std::vector<uint8_t>& labels, uint32_t salt) {
  Bytes b;
  for (size_t r = 0; r < labels.size(); ++r) {
    b.push_back(labels[r]);
    const Bytes px = pattern(3072, salt + uint32_t(r));
    b.insert(b.end(), px.begin(), px.end());
  }
  return b;
}

TEST(Cifar, RoundTripAcrossFiles) {
  const std::string dir = make_temp_dir();
  write_raw(dir + "/a.bin", cifar_records({3, 9}, 0));
  write_raw(dir + "/b.bin", cifar_records({0, 1, 2}, 100));
  const Dataset d = load_cifar10_bin({dir + "/a.bin", dir + "/b.bin"}, "c/train");
  ASSERT_EQ(d.n, 5);
  EXPECT_EQ(d.c, 3);
  EXPECT_EQ(d.h, 32);
  EXPECT_EQ(d.w, 32);
  EXPECT_EQ(d.num_classes, 10);
  EXPECT_EQ(d.labels, (std::vector<int32_t>{3, 9, 0, 1, 2}));
  ASSERT_EQ(d.images.size(), 5u * 3072);
  for (int i = 0; i < 5; ++i) {
    const Bytes want = pattern(3072, i < 2 ? uint32_t(i) : uint32_t(100 + i - 2));
    EXPECT_TRUE(std::equal(want.begin(), want.end(), d.images.begin() + i * 3072)) << "record " << i;
  }
}

TEST(Cifar, MalformedFiles) {
  const std::string dir = make_temp_dir();
  const std::string good = dir + "/good.bin";
  write_raw(good, cifar_records({1}, 0));

  const std::string ragged = dir + "/ragged.bin";
  Bytes r = cifar_records({1, 2}, 0);
  r.resize(r.size() - 5);
  write_raw(ragged, r);
  EXPECT_FAULT(error_of([&] { load_cifar10_bin({good, ragged}, "c"); }), ragged, "whole number");

  const std::string extra = dir + "/extra.bin";
  write_raw(extra, plus(cifar_records({1}, 0), 1));
  EXPECT_FAULT(error_of([&] { load_cifar10_bin({extra}, "c"); }), extra, "whole number");

  const std::string badlabel = dir + "/badlabel.bin";
  write_raw(badlabel, cifar_records({4, 10}, 0));
  EXPECT_FAULT(error_of([&] { load_cifar10_bin({badlabel}, "c"); }), badlabel, "out of range");

  const std::string empty = dir + "/empty.bin";
  write_raw(empty, {});
  EXPECT_FAULT(error_of([&] { load_cifar10_bin({empty}, "c"); }), empty, "empty");

  const std::string missing = dir + "/missing.bin";
  EXPECT_FAULT(error_of([&] { load_cifar10_bin({good, missing}, "c"); }), missing, std::strerror(ENOENT));
}

// ---------------------------------------------------------------------------------------------
// load_dataset, formats, default directories

TEST(LoadDataset, IdxDirectoryWithGzAndRawNames) {
  const std::string dir = make_temp_dir();
  write_gz(dir + "/train-images-idx3-ubyte.gz", idx_images(4, 5, 6, pattern(120)));
  write_raw(dir + "/train-labels-idx1-ubyte", idx_labels(4, {0, 1, 2, 3}));
  write_raw(dir + "/t10k-images-idx3-ubyte", idx_images(2, 5, 6, pattern(60, 9)));
  write_gz(dir + "/t10k-labels-idx1-ubyte.gz", idx_labels(2, {9, 8}));
  const DataSplit s = load_dataset(DataFormat::kMnist, dir);
  EXPECT_EQ(s.train.n, 4);
  EXPECT_EQ(s.test.n, 2);
  EXPECT_EQ(s.train.h, 5);
  EXPECT_EQ(s.train.w, 6);
  EXPECT_EQ(s.test.images, pattern(60, 9));
  EXPECT_EQ(s.test.labels, (std::vector<int32_t>{9, 8}));
  EXPECT_EQ(s.train.name, "mnist/train");
  EXPECT_EQ(s.test.name, "mnist/test");
}

TEST(LoadDataset, MissingIdxFileNamesIt) {
  const std::string dir = make_temp_dir();
  write_gz(dir + "/train-images-idx3-ubyte.gz", idx_images(1, 2, 2, pattern(4)));
  const std::string msg = error_of([&] { load_dataset(DataFormat::kFashionMnist, dir); });
  EXPECT_FAULT(msg, dir + "/train-labels-idx1-ubyte", std::strerror(ENOENT));
}

TEST(LoadDataset, CifarDirectory) {
  const std::string dir = make_temp_dir();
  for (int i = 1; i <= 5; ++i)
    write_raw(dir + "/data_batch_" + std::to_string(i) + ".bin", cifar_records({uint8_t(i), uint8_t(i)}, i));
  write_raw(dir + "/test_batch.bin", cifar_records({7}, 50));
  const DataSplit s = load_dataset(DataFormat::kCifar10, dir);
  EXPECT_EQ(s.train.n, 10);
  EXPECT_EQ(s.test.n, 1);
  EXPECT_EQ(s.train.labels[9], 5);
  EXPECT_EQ(s.test.labels[0], 7);
  EXPECT_EQ(s.train.name, "cifar10/train");
}

TEST(Formats, ParseAndDefaultDirs) {
  EXPECT_EQ(parse_data_format("fashion-mnist"), DataFormat::kFashionMnist);
  EXPECT_EQ(parse_data_format("mnist"), DataFormat::kMnist);
  EXPECT_EQ(parse_data_format("cifar10"), DataFormat::kCifar10);
  EXPECT_FAULT(error_of([] { parse_data_format("imagenet"); }), "imagenet", "fashion-mnist");
  EXPECT_EQ(default_data_dir(DataFormat::kFashionMnist), "/usr/share/datasets/fashion-mnist");
}

// ---------------------------------------------------------------------------------------------
// The real Fashion-MNIST as installed by Debian's dataset-fashion-mnist.

TEST(FashionMnist, RealFilesLoad) {
  const std::string dir = "/usr/share/datasets/fashion-mnist";
  struct stat st;
  if (::stat((dir + "/train-images-idx3-ubyte.gz").c_str(), &st) != 0 &&
      ::stat((dir + "/train-images-idx3-ubyte").c_str(), &st) != 0)
    GTEST_SKIP() << dir << " not present (install Debian's dataset-fashion-mnist)";
  const DataSplit s = load_dataset(DataFormat::kFashionMnist, dir);
  EXPECT_EQ(s.train.n, 60000);
  EXPECT_EQ(s.test.n, 10000);
  for (const Dataset* d : {&s.train, &s.test}) {
    EXPECT_EQ(d->c, 1);
    EXPECT_EQ(d->h, 28);
    EXPECT_EQ(d->w, 28);
    EXPECT_EQ(d->num_classes, 10);
    EXPECT_EQ(d->images.size(), size_t(d->n) * 784);
    std::vector<int64_t> per_class(10, 0);
    for (int32_t l : d->labels) ++per_class.at(size_t(l));
    for (int k = 0; k < 10; ++k) EXPECT_EQ(per_class[k], d->n / 10) << "class " << k;  // balanced
  }
  // Published statistics of the training set: mean 0.2860, std 0.3530.
  const Normalization nm = compute_normalization(s.train);
  ASSERT_EQ(nm.mean.size(), 1u);
  EXPECT_NEAR(nm.mean[0], 0.2860, 0.002);
  EXPECT_NEAR(nm.stddev[0], 0.3530, 0.002);
}

// ---------------------------------------------------------------------------------------------
// Normalisation

TEST(Normalization, PerChannelExact) {
  Dataset d;
  d.name = "n";
  d.n = 2;
  d.c = 2;
  d.h = 1;
  d.w = 2;
  d.num_classes = 2;
  // sample 0: ch0 {0, 255}, ch1 {51, 51}; sample 1: ch0 {255, 255}, ch1 {102, 0}
  d.images = {0, 255, 51, 51, 255, 255, 102, 0};
  d.labels = {0, 1};
  const Normalization nm = compute_normalization(d);
  ASSERT_EQ(nm.mean.size(), 2u);
  ASSERT_EQ(nm.stddev.size(), 2u);
  auto stats = [](std::vector<double> v) {
    double m = 0, s = 0;
    for (double x : v) m += x / 255.0;
    m /= double(v.size());
    for (double x : v) s += (x / 255.0 - m) * (x / 255.0 - m);
    return std::make_pair(m, std::sqrt(s / double(v.size())));
  };
  const auto c0 = stats({0, 255, 255, 255}), c1 = stats({51, 51, 102, 0});
  EXPECT_NEAR(nm.mean[0], c0.first, 1e-7);
  EXPECT_NEAR(nm.stddev[0], c0.second, 1e-7);
  EXPECT_NEAR(nm.mean[1], c1.first, 1e-7);
  EXPECT_NEAR(nm.stddev[1], c1.second, 1e-7);
}

TEST(Normalization, ConstantChannelStaysFinite) {
  Dataset d;
  d.name = "const";
  d.n = 3;
  d.c = 1;
  d.h = d.w = 2;
  d.images.assign(12, 17);
  d.labels = {0, 0, 0};
  const Normalization nm = compute_normalization(d);
  EXPECT_NEAR(nm.mean[0], 17 / 255.0, 1e-7);
  EXPECT_TRUE(std::isfinite(nm.stddev[0]) && nm.stddev[0] > 0);
}

// ---------------------------------------------------------------------------------------------
// Epoch order

TEST(EpochOrder, PermutationDeterministicAndKeyed) {
  const int64_t n = 1000;
  const auto a = epoch_order(n, 42, 3, true);
  ASSERT_EQ(a.size(), size_t(n));
  std::vector<int64_t> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(sorted[size_t(i)], i);
  EXPECT_EQ(a, epoch_order(n, 42, 3, true));
  EXPECT_NE(a, epoch_order(n, 42, 4, true));
  EXPECT_NE(a, epoch_order(n, 43, 3, true));
  int fixed = 0;
  for (int64_t i = 0; i < n; ++i) fixed += a[size_t(i)] == i;
  EXPECT_LT(fixed, 10);  // a shuffled permutation has ~1 fixed point on average
  const auto id = epoch_order(n, 42, 3, false);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(id[size_t(i)], i);
  EXPECT_TRUE(epoch_order(0, 1, 0, true).empty());
  EXPECT_EQ(epoch_order(1, 1, 0, true), std::vector<int64_t>{0});
}

TEST(EpochOrder, FirstPositionIsRoughlyUniform) {
  // Each of 8 items should lead the order about 1/8 of the time over many epochs.
  std::vector<int> count(8, 0);
  for (int e = 0; e < 8000; ++e) ++count[size_t(epoch_order(8, 7, e, true)[0])];
  for (int k = 0; k < 8; ++k) EXPECT_NEAR(count[k], 1000, 150) << k;
}

// ---------------------------------------------------------------------------------------------
// Batch assembly

Dataset synthetic(int64_t n, int c, int h, int w) {
  Dataset d;
  d.name = "synthetic";
  d.n = n;
  d.c = c;
  d.h = h;
  d.w = w;
  d.num_classes = 10;
  d.images.resize(size_t(n) * c * h * w);
  uint64_t s = 12345;
  for (auto& p : d.images) p = uint8_t(1 + ((s = s * 6364136223846793005ull + 1442695040888963407ull) >> 33) % 255);
  for (int64_t i = 0; i < n; ++i) d.labels.push_back(int32_t(i % 10));
  return d;
}

// Sample slot i of a (c, N, h, w) batch as a (c, h, w) vector.
std::vector<float> slot(const std::vector<float>& out, int N, int i, int c, int h, int w) {
  std::vector<float> v;
  for (int ch = 0; ch < c; ++ch)
    for (int k = 0; k < h * w; ++k) v.push_back(out[(size_t(ch) * N + i) * h * w + k]);
  return v;
}

TEST(AssembleBatch, LayoutAndNormalisation) {
  const Dataset d = synthetic(10, 3, 4, 5);
  Normalization nm;
  nm.mean = {0.1f, 0.5f, 0.9f};
  nm.stddev = {0.2f, 0.3f, 0.4f};
  const std::vector<int64_t> idx = {7, 2, 9};
  const int N = 3;
  std::vector<float> out(size_t(3) * N * 20, -99.f);
  std::vector<int32_t> labels(N, -1);
  assemble_batch(d, idx.data(), N, nm, Augment{}, 1, 0, out.data(), labels.data());
  for (int i = 0; i < N; ++i) {
    EXPECT_EQ(labels[i], d.labels[size_t(idx[i])]);
    for (int ch = 0; ch < 3; ++ch)
      for (int y = 0; y < 4; ++y)
        for (int x = 0; x < 5; ++x) {
          const uint8_t p = d.images[((size_t(idx[i]) * 3 + ch) * 4 + y) * 5 + x];
          const double want = (p / 255.0 - nm.mean[ch]) / nm.stddev[ch];
          ASSERT_NEAR(out[((size_t(ch) * N + i) * 4 + y) * 5 + x], want, 1e-5)
              << "sample " << i << " ch " << ch << " y " << y << " x " << x;
        }
  }
}

TEST(AssembleBatch, AugmentationIndependentOfBatchPosition) {
  // 200 samples of 3x32x32 (large enough for the parallel path) against one-at-a-time batches.
  const Dataset d = synthetic(200, 3, 32, 32);
  const Normalization nm = compute_normalization(d);
  Augment aug;
  aug.crop_pad = 2;
  aug.hflip = true;
  const int64_t epoch = 5;
  const auto order = epoch_order(d.n, 9, epoch, true);
  const int N = int(d.n);
  std::vector<float> big(size_t(3) * N * 1024);
  std::vector<int32_t> big_labels(N);
  assemble_batch(d, order.data(), N, nm, aug, 9, epoch, big.data(), big_labels.data());
  for (int i = 0; i < N; i += 17) {
    std::vector<float> one(3 * 1024);
    int32_t lab = -1;
    assemble_batch(d, &order[size_t(i)], 1, nm, aug, 9, epoch, one.data(), &lab);
    EXPECT_EQ(slot(big, N, i, 3, 32, 32), one) << "sample " << order[size_t(i)] << " slot " << i;
    EXPECT_EQ(lab, big_labels[i]);
  }
  // The same index in a different slot of a different small batch.
  const std::vector<int64_t> a = {11, 42, 5}, b = {42, 7};
  std::vector<float> oa(3 * 3 * 1024), ob(3 * 2 * 1024);
  std::vector<int32_t> la(3), lb(2);
  assemble_batch(d, a.data(), 3, nm, aug, 9, epoch, oa.data(), la.data());
  assemble_batch(d, b.data(), 2, nm, aug, 9, epoch, ob.data(), lb.data());
  EXPECT_EQ(slot(oa, 3, 1, 3, 32, 32), slot(ob, 2, 0, 3, 32, 32));
}

// The bytes a GPU step copies: through the normalisation table, channel by channel, they are the
// floats assemble_batch writes, bit for bit, with crops (padding included), flips and the
// parallel path (a 3x32x32 batch of 200); the table's entries are (v/255 - mean)/std.
TEST(AssembleBatch, BytesThroughTheTableAreTheFloatsBitForBit) {
  const Dataset d = synthetic(200, 3, 32, 32);
  Normalization nm = compute_normalization(d);
  nm.mean[1] = 0.3f, nm.stddev[2] = 0.7f;  // three different channels
  const std::vector<float> table = normalization_table(nm);
  ASSERT_EQ(table.size(), size_t(3) * 256);
  for (int ch = 0; ch < 3; ++ch)
    for (int v : {0, 1, 128, 255})
      EXPECT_EQ(table[size_t(ch) * 256 + size_t(v)], float((v / 255.0 - nm.mean[ch]) / nm.stddev[ch]));
  for (int pad : {0, 3}) {
    Augment aug;
    aug.crop_pad = pad;
    aug.hflip = pad > 0;
    const auto order = epoch_order(d.n, 4, 2, true);
    for (int N : {200, 7}) {
      const size_t plane = 32 * 32, total = size_t(3) * N * plane;
      std::vector<float> want(total, -99.f);
      std::vector<uint8_t> bytes(total, 77);
      std::vector<int32_t> lf(N, -1), lb(N, -2);
      assemble_batch(d, order.data(), N, nm, aug, 4, 2, want.data(), lf.data());
      assemble_batch_bytes(d, order.data(), N, aug, 4, 2, bytes.data(), lb.data());
      EXPECT_EQ(lb, lf);
      size_t zeros = 0;
      for (size_t j = 0; j < total; ++j) {
        const size_t ch = j / (size_t(N) * plane);
        ASSERT_EQ(table[ch * 256 + bytes[j]], want[j]) << "pad " << pad << ", N " << N << ", element " << j;
        zeros += bytes[j] == 0;
      }
      if (pad > 0) {  // the crops' padding (synthetic pixels are never 0)
        EXPECT_GT(zeros, total / 100);
      }
    }
  }
}

// Finds how sample s was transformed: the (dy, dx, flip) with out(y, x) = img(y+dy, x'+dx),
// x' = flip ? w-1-x : x, padding value outside. Returns false if no candidate matches.
struct Draw {
  int dy, dx;
  bool flip;
};
bool identify(const Dataset& d, int64_t s, const std::vector<float>& got, const Normalization& nm,
              int pad, Draw* found) {
  const int c = d.c, h = d.h, w = d.w;
  for (int flip = 0; flip < 2; ++flip)
    for (int dy = -pad; dy <= pad; ++dy)
      for (int dx = -pad; dx <= pad; ++dx) {
        bool ok = true;
        for (int ch = 0; ch < c && ok; ++ch)
          for (int y = 0; y < h && ok; ++y)
            for (int x = 0; x < w && ok; ++x) {
              const int sy = y + dy, sx = (flip ? w - 1 - x : x) + dx;
              const int p = (sy >= 0 && sy < h && sx >= 0 && sx < w)
                                ? d.images[((size_t(s) * c + ch) * h + sy) * w + sx]
                                : 0;
              const float want = float((p / 255.0 - nm.mean[ch]) / nm.stddev[ch]);
              ok = std::fabs(got[(size_t(ch) * h + y) * w + x] - want) < 1e-5f;
            }
        if (ok) {
          *found = {dy, dx, flip != 0};
          return true;
        }
      }
  return false;
}

TEST(AssembleBatch, FlipReallyFlips) {
  const Dataset d = synthetic(4, 2, 5, 6);  // random pixels in [1, 255]: no symmetric rows
  const Normalization nm = compute_normalization(d);
  Augment aug;
  aug.hflip = true;
  int flips = 0;
  const int epochs = 200;
  for (int e = 0; e < epochs; ++e) {
    const int64_t s = 2;
    std::vector<float> out(2 * 30);
    int32_t lab;
    assemble_batch(d, &s, 1, nm, aug, 3, e, out.data(), &lab);
    Draw dr;
    ASSERT_TRUE(identify(d, s, out, nm, 0, &dr)) << "epoch " << e << ": neither the image nor its mirror";
    EXPECT_EQ(dr.dy, 0);
    EXPECT_EQ(dr.dx, 0);
    flips += dr.flip;
    // Spot check the mirror directly on a flipped draw.
    if (dr.flip) {
      EXPECT_FLOAT_EQ(out[0], float((d.images[size_t(s) * 60 + 5] / 255.0 - nm.mean[0]) / nm.stddev[0]));
    }
  }
  EXPECT_GT(flips, epochs / 2 - 30);
  EXPECT_LT(flips, epochs / 2 + 30);
  // Without hflip, never flipped.
  for (int e = 0; e < 20; ++e) {
    const int64_t s = 2;
    std::vector<float> out(2 * 30);
    int32_t lab;
    assemble_batch(d, &s, 1, nm, Augment{}, 3, e, out.data(), &lab);
    Draw dr;
    ASSERT_TRUE(identify(d, s, out, nm, 0, &dr));
    EXPECT_FALSE(dr.flip);
  }
}

TEST(AssembleBatch, CropShiftsWithZeroPadding) {
  const Dataset d = synthetic(3, 1, 6, 7);
  const Normalization nm = compute_normalization(d);
  Augment aug;
  aug.crop_pad = 2;
  std::set<std::pair<int, int>> seen;
  const int64_t s = 1;
  for (int e = 0; e < 400; ++e) {
    std::vector<float> out(42);
    int32_t lab;
    assemble_batch(d, &s, 1, nm, aug, 11, e, out.data(), &lab);
    Draw dr;
    ASSERT_TRUE(identify(d, s, out, nm, 2, &dr)) << "epoch " << e << ": not a shifted crop";
    EXPECT_FALSE(dr.flip);
    seen.insert({dr.dy, dr.dx});
    if (dr.dy == 2 && dr.dx == -2) {
      // Bottom two rows and left two columns are the zero padding, normalised.
      const float zero = float((0 - nm.mean[0]) / nm.stddev[0]);
      EXPECT_FLOAT_EQ(out[5 * 7 + 3], zero);
      EXPECT_FLOAT_EQ(out[0 * 7 + 1], zero);
      EXPECT_FLOAT_EQ(out[0 * 7 + 2], float((d.images[42 + 2 * 7 + 0] / 255.0 - nm.mean[0]) / nm.stddev[0]));
    }
  }
  EXPECT_EQ(seen.size(), 25u) << "every offset in [-2, 2]^2 should occur in 400 epochs";
}

TEST(AssembleBatch, CropAndFlipTogetherAndKeyedBySeed) {
  const Dataset d = synthetic(5, 3, 6, 6);
  const Normalization nm = compute_normalization(d);
  Augment aug;
  aug.crop_pad = 1;
  aug.hflip = true;
  int differ_seed = 0;
  for (int e = 0; e < 50; ++e) {
    const int64_t s = 4;
    std::vector<float> o1(108), o2(108);
    int32_t lab;
    assemble_batch(d, &s, 1, nm, aug, 1, e, o1.data(), &lab);
    assemble_batch(d, &s, 1, nm, aug, 2, e, o2.data(), &lab);
    Draw dr;
    ASSERT_TRUE(identify(d, s, o1, nm, 1, &dr)) << "epoch " << e;
    differ_seed += o1 != o2;
  }
  EXPECT_GT(differ_seed, 30);  // 18 outcomes: seeds agree ~1/18 of the time
}

TEST(AssembleBatch, RejectsBadArguments) {
  const Dataset d = synthetic(4, 1, 3, 3);
  const Normalization nm = compute_normalization(d);
  std::vector<float> out(9 * 2);
  std::vector<int32_t> lab(2);
  const std::vector<int64_t> bad = {0, 4};
  EXPECT_FAULT(error_of([&] { assemble_batch(d, bad.data(), 2, nm, Augment{}, 0, 0, out.data(), lab.data()); }),
               "synthetic", "out of range");
  const std::vector<int64_t> neg = {-1};
  EXPECT_FAULT(error_of([&] { assemble_batch(d, neg.data(), 1, nm, Augment{}, 0, 0, out.data(), lab.data()); }),
               "synthetic", "out of range");
  Normalization wrong;
  wrong.mean = {0, 0};
  wrong.stddev = {1, 1};
  const std::vector<int64_t> ok = {0};
  EXPECT_FAULT(error_of([&] { assemble_batch(d, ok.data(), 1, wrong, Augment{}, 0, 0, out.data(), lab.data()); }),
               "synthetic", "channels");
}

}  // namespace
}  // namespace sq
