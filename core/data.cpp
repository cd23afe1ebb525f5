// Data sets: IDX (MNIST, Fashion-MNIST; gzipped or raw) and CIFAR-10 binary readers, per-channel
// normalisation, per-epoch order and batch assembly with counter-keyed augmentation.
//
// Readers never trust a header: every size is bounded before it is used, raw files are checked
// against their length on disk before anything is allocated, and gzip streams are read
// incrementally (memory grows with the data actually decompressed, never with what a header
// claims), so a malformed file costs a one-line sq::Error "<path>: <fault>", not a crash, a huge
// allocation or a silent misread.
#include "core/data.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <new>

#include "core/error.h"
#include "core/rng.h"

namespace sq {

namespace {

constexpr uint64_t kMaxElements = uint64_t(1) << 31;  // bytes of pixels in one data set
constexpr uint32_t kMaxSide = 4096;

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// A file read front to back: gzip-decompressed if its name ends in .gz, raw otherwise. Gzip is
// inflated directly (not through gzread, which passes non-gzip data through and ignores what
// follows the last member) so that anything but a sequence of intact gzip members is an error.
class InputFile {
 public:
  explicit InputFile(const std::string& path) : path_(path), gz_(ends_with(path, ".gz")) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) fail(path, ": cannot open: ", std::strerror(errno));
    // The destructor does not run if the constructor throws: close the descriptor here.
    auto give_up = [this](const std::string& why) {
      ::close(fd_);
      fd_ = -1;
      fail(path_, ": ", why);
    };
    struct stat st;
    if (::fstat(fd_, &st) != 0) give_up(std::string("cannot stat: ") + std::strerror(errno));
    if (S_ISDIR(st.st_mode)) give_up("is a directory, not a data file");
    if (S_ISREG(st.st_mode)) size_on_disk_ = int64_t(st.st_size);
    if (gz_) {
      try {
        inbuf_.resize(size_t(1) << 18);
      } catch (const std::bad_alloc&) {
        give_up("out of memory");
      }
      std::memset(&zs_, 0, sizeof zs_);
      if (inflateInit2(&zs_, 15 + 16) != Z_OK) give_up("cannot initialise zlib");
      z_init_ = true;
    }
  }
  ~InputFile() {
    if (z_init_) inflateEnd(&zs_);
    if (fd_ >= 0) ::close(fd_);
  }
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;

  bool gz() const { return gz_; }
  // Exact byte count of the content for a raw regular file; -1 where unknown (gzip, pipes).
  int64_t known_size() const { return gz_ ? -1 : size_on_disk_; }

  // Reads up to n bytes; returns fewer only at the end of the content. Throws on read errors and
  // on corrupt, truncated or trailing-garbage gzip streams.
  size_t read(uint8_t* dst, size_t n) { return gz_ ? read_gz(dst, n) : read_raw(dst, n); }

  // Reads up to n bytes into a vector that grows with the data actually read (never allocating
  // much more than has arrived), so a header promising gigabytes costs nothing if the file is
  // short. Returns the number of bytes obtained (< n when the content ends early).
  size_t read_growing(std::vector<uint8_t>& out, size_t n) {
    out.clear();
    size_t got = 0;
    while (got < n) {
      if (got == out.size()) {
        // A raw file's length is known (and already checked against n): allocate it at once.
        size_t next = std::min(n, std::max(out.size() * 2, size_t(16) << 20));
        if (got == 0 && known_size() > 0) next = std::min<uint64_t>(n, uint64_t(known_size()));
        out.resize(std::max(next, got + 1));
      }
      const size_t want = out.size() - got;
      const size_t r = read(out.data() + got, want);
      got += r;
      if (r < want) break;  // content ended early
    }
    out.resize(got);
    return got;
  }

  // Reads and discards the rest of a gzip stream, so that a corrupt stream is reported as such
  // rather than as whatever its garbled output happens to look like. No-op for raw files.
  void drain_gz() {
    if (!gz_) return;
    std::vector<uint8_t> b(size_t(1) << 16);
    while (read(b.data(), b.size()) == b.size()) {
    }
  }

  // Whether the content is exhausted (reading to the end also makes zlib verify the CRC and
  // length of the last gzip member).
  bool at_end() {
    uint8_t b[4096];
    return read(b, sizeof b) == 0;
  }

 private:
  size_t read_raw(uint8_t* dst, size_t n) {
    size_t got = 0;
    while (got < n) {
      const ssize_t r = ::read(fd_, dst + got, std::min<size_t>(n - got, size_t(1) << 30));
      if (r < 0) {
        if (errno == EINTR) continue;
        fail(path_, ": read error: ", std::strerror(errno));
      }
      if (r == 0) break;
      got += size_t(r);
    }
    return got;
  }

  size_t read_gz(uint8_t* dst, size_t n) {
    size_t got = 0;
    while (got < n && !z_done_) {
      if (zs_.avail_in == 0) {
        const size_t r = read_raw(inbuf_.data(), inbuf_.size());
        if (r == 0) {
          if (!member_done_)
            fail(path_, ": corrupt gzip stream: compressed data ends unexpectedly (truncated file?)");
          z_done_ = true;
          break;
        }
        if (raw_read_ == 0 && (inbuf_[0] != 0x1f || (r > 1 && inbuf_[1] != 0x8b)))
          fail(path_, ": not a gzip file (a name ending in .gz promises gzip data)");
        raw_read_ += r;
        zs_.next_in = inbuf_.data();
        zs_.avail_in = unsigned(r);
      }
      if (member_done_) {  // more input after a complete member: only another member may follow
        if (zs_.next_in[0] != 0x1f)
          fail(path_, ": trailing garbage after the gzip stream at byte ", compressed_offset());
        if (inflateReset(&zs_) != Z_OK) fail(path_, ": cannot reset zlib");
        member_done_ = false;
      }
      const unsigned chunk = unsigned(std::min<size_t>(n - got, size_t(1) << 30));
      zs_.next_out = dst + got;
      zs_.avail_out = chunk;
      const int rc = inflate(&zs_, Z_NO_FLUSH);
      got += chunk - zs_.avail_out;
      if (rc == Z_STREAM_END) {
        member_done_ = true;
      } else if (rc == Z_DATA_ERROR || rc == Z_NEED_DICT || rc == Z_STREAM_ERROR) {
        fail(path_, ": corrupt gzip stream: ", zs_.msg ? zs_.msg : "invalid data", " (near byte ",
             compressed_offset(), ")");
      } else if (rc == Z_MEM_ERROR) {
        fail(path_, ": out of memory decompressing the gzip stream");
      }  // Z_OK, or Z_BUF_ERROR (needs more input): loop
    }
    return got;
  }

  // Position in the compressed file of the next byte zlib would consume.
  uint64_t compressed_offset() const { return raw_read_ - zs_.avail_in; }

  std::string path_;
  bool gz_;
  int fd_ = -1;
  int64_t size_on_disk_ = -1;
  z_stream zs_;
  bool z_init_ = false, member_done_ = false, z_done_ = false;
  uint64_t raw_read_ = 0;  // compressed bytes read from the file so far
  std::vector<uint8_t> inbuf_;
};

uint32_t be32(const uint8_t* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08X", v);
  return buf;
}

struct IdxArray {
  std::vector<uint32_t> dims;
  std::vector<uint8_t> data;
};

// Reads one unsigned-byte IDX file of the given rank (1: labels, 3: images).
IdxArray read_idx(const std::string& path, int rank) {
  const char* kind = rank == 1 ? "label" : "image";
  InputFile f(path);
  // A header fault in a gzip file may really be a corrupt stream: check that first.
  auto bad = [&f](const auto&... args) {
    f.drain_gz();
    fail(args...);
  };
  uint8_t head[4 + 4 * 3];
  const size_t head_len = 4 + 4 * size_t(rank);
  const size_t got_head = f.read(head, head_len);
  if (got_head < 4)
    bad(path, ": truncated header: ", got_head, " bytes where an IDX ", kind, " file starts with a 4-byte magic number");
  const uint32_t magic = be32(head), want = 0x00000800u | uint32_t(rank);
  if (magic != want) {
    std::string hint;
    if (magic == 0x00000801u || magic == 0x00000803u)
      hint = magic == 0x00000801u ? " (this is an IDX label file)" : " (this is an IDX image file)";
    else if (head[0] == 0x1f && head[1] == 0x8b)
      hint = " (this looks gzip-compressed; name it *.gz)";
    bad(path, ": wrong magic number ", hex32(magic), ", expected ", hex32(want), " for an IDX ", kind, " file", hint);
  }
  if (got_head < head_len)
    bad(path, ": truncated header: ", got_head, " of ", head_len, " bytes");

  IdxArray a;
  for (int i = 0; i < rank; ++i) a.dims.push_back(be32(head + 4 + 4 * i));
  auto dims_str = [&]() {
    std::string s;
    for (size_t i = 0; i < a.dims.size(); ++i) s += (i ? " x " : "") + std::to_string(a.dims[i]);
    return s;
  };
  for (uint32_t d : a.dims)
    if (d == 0) bad(path, ": zero dimension in header (", dims_str(), ")");
  for (int i = 1; i < rank; ++i)
    if (a.dims[i] > kMaxSide)
      bad(path, ": absurd dimensions ", dims_str(), " (at most ", kMaxSide, " per side)");
  uint64_t elements = 1;
  for (uint32_t d : a.dims) elements *= d;  // no overflow: 2^32 * 4096 * 4096 < 2^64
  if (elements > kMaxElements)
    bad(path, ": absurd dimensions ", dims_str(), " = ", elements, " elements (at most 2^31)");

  const int64_t known = f.known_size();
  if (known >= 0) {  // raw regular file: check the length before allocating anything
    const uint64_t body = uint64_t(std::max<int64_t>(known, int64_t(head_len))) - head_len;
    if (body < elements)
      fail(path, ": truncated data: header (", dims_str(), ") promises ", elements, " bytes, file has ", body);
    if (body > elements)
      fail(path, ": trailing data: ", body - elements, " bytes after the ", elements, " the header (", dims_str(), ") describes");
  }
  const size_t got = f.read_growing(a.data, size_t(elements));
  if (got < elements)
    fail(path, ": truncated data: header (", dims_str(), ") promises ", elements, " bytes, ",
         f.gz() ? "stream" : "file", " has ", got);
  if (!f.at_end())
    fail(path, ": trailing data after the ", elements, " bytes the header (", dims_str(), ") describes");
  return a;
}

}  // namespace

DataFormat parse_data_format(const std::string& s) {
  if (s == "fashion-mnist") return DataFormat::kFashionMnist;
  if (s == "mnist") return DataFormat::kMnist;
  if (s == "cifar10") return DataFormat::kCifar10;
  fail("unknown data set '", s, "' (expected fashion-mnist, mnist or cifar10)");
}

static const char* format_name(DataFormat f) {
  switch (f) {
    case DataFormat::kFashionMnist: return "fashion-mnist";
    case DataFormat::kMnist: return "mnist";
    case DataFormat::kCifar10: return "cifar10";
  }
  return "?";
}

std::string default_data_dir(DataFormat f) {
  return std::string("/usr/share/datasets/") + format_name(f);
}

Dataset load_idx(const std::string& images_path, const std::string& labels_path, int num_classes,
                 const std::string& name) {
  if (num_classes < 1 || num_classes > 256)
    fail("load_idx: num_classes ", num_classes, " outside [1, 256]");
  IdxArray img = read_idx(images_path, 3);
  IdxArray lab = read_idx(labels_path, 1);
  if (img.dims[0] != lab.dims[0])
    fail(images_path, ": count mismatch: ", img.dims[0], " images but ", lab.dims[0], " labels in ", labels_path);
  Dataset d;
  d.name = name;
  d.n = int64_t(img.dims[0]);
  d.c = 1;
  d.h = int(img.dims[1]);
  d.w = int(img.dims[2]);
  d.num_classes = num_classes;
  d.labels.resize(size_t(d.n));
  for (int64_t i = 0; i < d.n; ++i) {
    const int v = lab.data[size_t(i)];
    if (v >= num_classes)
      fail(labels_path, ": label ", v, " of sample ", i, " is out of range [0, ", num_classes, ")");
    d.labels[size_t(i)] = v;
  }
  d.images = std::move(img.data);
  return d;
}

Dataset load_cifar10_bin(const std::vector<std::string>& paths, const std::string& name) {
  constexpr int kC = 3, kH = 32, kW = 32, kPixels = kC * kH * kW, kRecord = 1 + kPixels;
  constexpr uint64_t kMaxRecords = kMaxElements / kPixels;
  if (paths.empty()) fail("load_cifar10_bin: no files given for ", name);
  Dataset d;
  d.name = name;
  d.c = kC;
  d.h = kH;
  d.w = kW;
  d.num_classes = 10;
  std::vector<uint8_t> buf;
  for (const std::string& path : paths) {
    InputFile f(path);
    const uint64_t room = (kMaxRecords - uint64_t(d.n)) * kRecord;  // bytes this file may hold
    const int64_t known = f.known_size();
    if (known >= 0) {
      if (known == 0) fail(path, ": empty file, no CIFAR-10 records");
      if (known % kRecord != 0)
        fail(path, ": size ", known, " bytes is not a whole number of ", kRecord,
             "-byte CIFAR-10 records (", known % kRecord, " bytes left over; truncated or not CIFAR-10 binary)");
      if (uint64_t(known) > room)
        fail(path, ": absurd size: ", known / kRecord, " records would exceed 2^31 pixels in ", name);
    }
    const size_t limit = known >= 0 ? size_t(known) : size_t(room);
    const size_t got = f.read_growing(buf, limit);
    if (got == limit && !f.at_end()) {
      if (known >= 0) fail(path, ": file grew while being read");
      fail(path, ": absurd size: more than 2^31 pixels of records in ", name);
    }
    if (known >= 0 && int64_t(got) != known)
      fail(path, ": truncated data: read ", got, " of ", known, " bytes (file changed while being read?)");
    if (got == 0) fail(path, ": empty file, no CIFAR-10 records");
    if (got % kRecord != 0)
      fail(path, ": size ", got, " bytes is not a whole number of ", kRecord, "-byte CIFAR-10 records (",
           got % kRecord, " bytes left over; truncated or not CIFAR-10 binary)");
    const size_t records = got / kRecord;
    const size_t n0 = size_t(d.n);
    d.images.resize((n0 + records) * kPixels);
    d.labels.resize(n0 + records);
    for (size_t r = 0; r < records; ++r) {
      const uint8_t* rec = buf.data() + r * kRecord;
      if (rec[0] >= 10)
        fail(path, ": label ", int(rec[0]), " of record ", r, " is out of range [0, 10)");
      d.labels[n0 + r] = rec[0];
      std::memcpy(d.images.data() + (n0 + r) * kPixels, rec + 1, kPixels);
    }
    d.n = int64_t(n0 + records);
  }
  return d;
}

DataSplit load_dataset(DataFormat f, const std::string& dir, bool with_train) {
  const std::string fmt = format_name(f);
  DataSplit s;
  if (f == DataFormat::kCifar10) {
    // Accept the directory itself or the one the official archive unpacks to.
    std::string base = dir;
    if (!file_exists(base + "/data_batch_1.bin") && file_exists(base + "/cifar-10-batches-bin/data_batch_1.bin"))
      base += "/cifar-10-batches-bin";
    std::vector<std::string> train;
    for (int i = 1; i <= 5; ++i) train.push_back(base + "/data_batch_" + std::to_string(i) + ".bin");
    if (with_train) s.train = load_cifar10_bin(train, fmt + "/train");
    s.test = load_cifar10_bin({base + "/test_batch.bin"}, fmt + "/test");
    return s;
  }
  // IDX: prefer the distributed .gz name, fall back to the raw (gunzipped) name.
  auto find = [&](const std::string& stem) {
    const std::string gz = dir + "/" + stem + ".gz", raw = dir + "/" + stem;
    if (file_exists(gz)) return gz;
    if (file_exists(raw)) return raw;
    const int e = errno;
    fail(gz, ": cannot open: ", std::strerror(e), " (nor ", raw, "); is the ", fmt,
         " data set installed there? Pass its directory with --data-dir");
  };
  std::string train_images, train_labels;
  if (with_train) train_images = find("train-images-idx3-ubyte"), train_labels = find("train-labels-idx1-ubyte");
  const std::string test_images = find("t10k-images-idx3-ubyte"), test_labels = find("t10k-labels-idx1-ubyte");
  if (with_train) s.train = load_idx(train_images, train_labels, 10, fmt + "/train");
  s.test = load_idx(test_images, test_labels, 10, fmt + "/test");
  if (with_train && (s.train.h != s.test.h || s.train.w != s.test.w))
    fail(dir, ": train images are ", s.train.h, "x", s.train.w, " but test images are ", s.test.h, "x", s.test.w);
  return s;
}

Normalization compute_normalization(const Dataset& d) {
  const size_t plane = size_t(d.h) * size_t(d.w);
  if (d.n <= 0 || d.c <= 0 || plane == 0) fail(d.name, ": cannot normalise an empty data set");
  if (d.images.size() < size_t(d.n) * d.c * plane)
    fail(d.name, ": image buffer holds ", d.images.size(), " bytes, shape needs ", size_t(d.n) * d.c * plane);
  // Exact per-channel histograms, then mean and variance from them in double (two-pass).
  std::vector<uint64_t> hist(size_t(d.c) * 256, 0);
#pragma omp parallel
  {
    std::vector<uint64_t> local(size_t(d.c) * 256, 0);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < d.n; ++i)
      for (int ch = 0; ch < d.c; ++ch) {
        const uint8_t* p = d.images.data() + (size_t(i) * d.c + ch) * plane;
        uint64_t* hc = local.data() + size_t(ch) * 256;
        for (size_t k = 0; k < plane; ++k) ++hc[p[k]];
      }
#pragma omp critical
    for (size_t k = 0; k < hist.size(); ++k) hist[k] += local[k];
  }
  Normalization nm;
  const double count = double(d.n) * double(plane);
  for (int ch = 0; ch < d.c; ++ch) {
    const uint64_t* hc = hist.data() + size_t(ch) * 256;
    double sum = 0;
    for (int v = 0; v < 256; ++v) sum += double(hc[v]) * (v / 255.0);
    const double mean = sum / count;
    double ss = 0;
    for (int v = 0; v < 256; ++v) {
      const double dv = v / 255.0 - mean;
      ss += double(hc[v]) * dv * dv;
    }
    const double sd = std::sqrt(ss / count);
    nm.mean.push_back(float(mean));
    // A constant channel has no spread; dividing by 1 keeps it finite instead of infinite.
    nm.stddev.push_back(sd > 1e-12 ? float(sd) : 1.0f);
  }
  return nm;
}

std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch, bool shuffle) {
  if (n < 0) fail("epoch_order: negative sample count ", n);
  std::vector<int64_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[size_t(i)] = i;
  if (!shuffle) return p;
  SplitMix rng(hash_combine(hash_combine(seed, static_cast<uint64_t>(RngStream::kShuffle)),
                            static_cast<uint64_t>(epoch)));
  for (int64_t i = n - 1; i > 0; --i) {
    const int64_t j = int64_t(rng.below(uint64_t(i) + 1));
    std::swap(p[size_t(i)], p[size_t(j)]);
  }
  return p;
}

namespace {
// Uniform integer in [0, m) from a 64-bit hash.
int draw_below(uint64_t h, uint64_t m) {
  return int((static_cast<unsigned __int128>(h) * m) >> 64);
}
}  // namespace

namespace {

// assemble_batch and assemble_batch_bytes: out(c, i, y, x) = channel(c)(crop(y, x)) of sample
// indices[i]'s channel c, after augmentation, with the padding's pixels 0. channel(c) maps a
// pixel value to T: the normalisation table's row, or the byte itself (a map the compiler sees
// through, so that the bytes' rows are plain copies).
template <class T, class Channel>
void assemble_with(const Dataset& d, const int64_t* indices, int N, Channel channel, const Augment& aug,
                   uint64_t seed, int64_t epoch, T* out, int32_t* labels_out) {
  if (N < 0) fail("assemble_batch: negative batch size ", N);
  if (N == 0) return;
  const int C = d.c, H = d.h, W = d.w;
  const size_t plane = size_t(H) * size_t(W);
  if (aug.crop_pad < 0 || aug.crop_pad > std::max(H, W))
    fail("crop padding ", aug.crop_pad, " outside [0, ", std::max(H, W), "] for ", H, "x", W, " images");
  SQ_ASSERT(d.images.size() >= size_t(d.n) * C * plane && d.labels.size() >= size_t(d.n),
            "data set ", d.name, " is smaller than its shape");
  for (int i = 0; i < N; ++i)
    if (indices[i] < 0 || indices[i] >= d.n)
      fail(d.name, ": sample index ", indices[i], " out of range [0, ", d.n, ")");

  const int pad = aug.crop_pad;
  const bool hflip = aug.hflip;
  // About 2 ns an element serially: a typical batch (128 x 3x32x32) takes well under a
  // millisecond, where a parallel region's fork and barrier cost more than they save, and much
  // more on a machine whose cores are shared. Only large batches (evaluation) go parallel.
  const bool parallel = size_t(N) * C * plane >= (size_t(1) << 19);
#pragma omp parallel for schedule(static) if (parallel)
  for (int i = 0; i < N; ++i) {
    const int64_t idx = indices[i];
    // Draws keyed by (seed, epoch, sample) only; each has its own sub-key so that enabling one
    // augmentation does not change the others.
    const uint64_t key = sample_key(seed, RngStream::kAugment, uint64_t(epoch), uint64_t(idx));
    int dy = 0, dx = 0;
    bool flip = false;
    if (pad > 0) {
      dy = draw_below(hash_combine(key, 1), uint64_t(2 * pad + 1)) - pad;
      dx = draw_below(hash_combine(key, 2), uint64_t(2 * pad + 1)) - pad;
    }
    if (hflip) flip = (hash_combine(key, 3) >> 63) != 0;
    labels_out[i] = d.labels[size_t(idx)];
    const uint8_t* img = d.images.data() + size_t(idx) * C * plane;
    for (int ch = 0; ch < C; ++ch) {
      const uint8_t* src = img + size_t(ch) * plane;
      T* dst = out + (size_t(ch) * N + i) * plane;
      const auto L = channel(ch);
      const T zero = L(0);  // the zero padding, mapped
      // out(y, x) = crop(y, flip ? W-1-x : x), crop(y, x) = image(y + dy, x + dx), 0 outside.
      for (int y = 0; y < H; ++y) {
        T* row = dst + size_t(y) * W;
        const int sy = y + dy;
        if (sy < 0 || sy >= H) {
          std::fill(row, row + W, zero);
          continue;
        }
        // The columns whose source sx lies in the image, [x0, x1); the padding either side.
        const int x0 = std::min(W, std::max(0, flip ? dx : -dx));
        const int x1 = std::max(x0, std::min(W, flip ? W + dx : W - dx));
        std::fill(row, row + x0, zero);
        std::fill(row + x1, row + W, zero);
        const uint8_t* srow = src + size_t(sy) * W;
        if (!flip) {
          for (int x = x0; x < x1; ++x) row[x] = L(srow[x + dx]);
        } else {
          for (int x = x0; x < x1; ++x) row[x] = L(srow[W - 1 - x + dx]);
        }
      }
    }
  }
}

}  // namespace

void check_normalization(const Dataset& d, const Normalization& norm) {
  if (norm.mean.size() != size_t(d.c) || norm.stddev.size() != size_t(d.c))
    fail(d.name, ": normalisation has ", norm.mean.size(), " means and ", norm.stddev.size(),
         " deviations for ", d.c, " channels");
}

std::vector<float> normalization_table(const Normalization& norm) {
  SQ_ASSERT(norm.mean.size() == norm.stddev.size(), "normalisation with ", norm.mean.size(), " means and ",
            norm.stddev.size(), " deviations");
  const size_t C = norm.mean.size();
  std::vector<float> lut(C * 256);
  for (size_t ch = 0; ch < C; ++ch)
    for (int v = 0; v < 256; ++v)
      lut[ch * 256 + size_t(v)] = float((v / 255.0 - double(norm.mean[ch])) / double(norm.stddev[ch]));
  return lut;
}

void assemble_batch(const Dataset& d, const int64_t* indices, int N, const Normalization& norm,
                    const Augment& aug, uint64_t seed, int64_t epoch, float* out,
                    int32_t* labels_out) {
  check_normalization(d, norm);
  // Pixel value -> normalised float, per channel (exactly (v/255 - mean)/std rounded once).
  const std::vector<float> lut = normalization_table(norm);
  auto channel = [&lut](int ch) {
    const float* L = lut.data() + size_t(ch) * 256;
    return [L](uint8_t v) { return L[v]; };
  };
  assemble_with(d, indices, N, channel, aug, seed, epoch, out, labels_out);
}

void assemble_batch_bytes(const Dataset& d, const int64_t* indices, int N, const Augment& aug,
                          uint64_t seed, int64_t epoch, uint8_t* out, int32_t* labels_out) {
  auto channel = [](int) { return [](uint8_t v) { return v; }; };
  assemble_with(d, indices, N, channel, aug, seed, epoch, out, labels_out);
}

}  // namespace sq
