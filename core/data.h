// Data sets and batch assembly. Images are held as uint8 (n, c, h, w) in memory; a batch is
// assembled into the engine's channel-major float layout (C, N, H, W), normalised, with optional
// augmentation keyed by (seed, epoch, global sample index) — never by rank or batch position —
// so that N ranks see exactly what one rank would.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace sq {

struct Dataset {
  std::string name;             // e.g. "fashion-mnist/train"
  int64_t n = 0;                // samples
  int c = 0, h = 0, w = 0;      // image shape
  int num_classes = 0;
  std::vector<uint8_t> images;  // (n, c, h, w)
  std::vector<int32_t> labels;  // (n), each in [0, num_classes)
};

struct DataSplit {
  Dataset train, test;
};

// The formats squeeze reads. IDX (MNIST, Fashion-MNIST; gzipped or raw) and the CIFAR-10
// binary format (data_batch_1..5.bin, test_batch.bin).
enum class DataFormat { kFashionMnist, kMnist, kCifar10 };

// Parses "fashion-mnist" | "mnist" | "cifar10"; throws sq::Error naming the bad value.
DataFormat parse_data_format(const std::string& s);
// Debian's dataset-fashion-mnist installs to /usr/share/datasets/fashion-mnist.
std::string default_data_dir(DataFormat f);

// Reads one IDX image file and its label file (each gzipped if the name ends in .gz, raw
// otherwise). Validates magic numbers, dimensions (rank, non-zero, at most 4096 per side),
// lengths (truncated or trailing data), agreement of the two counts, and labels < num_classes.
// Any fault: sq::Error "<path>: <what is wrong>".
Dataset load_idx(const std::string& images_path, const std::string& labels_path,
                 int num_classes, const std::string& name);

// Reads CIFAR-10 binary batches (each record: 1 label byte + 3072 pixel bytes).
Dataset load_cifar10_bin(const std::vector<std::string>& paths, const std::string& name);

// Loads train and test splits of a format from a directory (file names as distributed:
// train-images-idx3-ubyte[.gz], ..., or data_batch_{1..5}.bin and test_batch.bin). With
// with_train false, the test split only (train left empty): evaluating weights that carry
// their normalization needs nothing else.
DataSplit load_dataset(DataFormat f, const std::string& dir, bool with_train = true);

// Per-channel mean and standard deviation of a data set's pixels in [0, 1].
struct Normalization {
  std::vector<float> mean, stddev;
};
Normalization compute_normalization(const Dataset& d);

struct Augment {
  int crop_pad = 0;    // random crop of the original size from the image zero-padded by this
  bool hflip = false;  // random horizontal flip with probability 1/2
};

// The permutation of [0, n) used for epoch `epoch`: a Fisher–Yates shuffle keyed by
// (seed, epoch). shuffle=false gives the identity.
std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch, bool shuffle);

// Assembles a batch: out (c, N, h, w) float = (pixel/255 - mean) / std after augmentation, and
// labels_out (N). indices[i] is sample i's index in the data set, which also keys its
// augmentation draws with (seed, epoch). Augment{} (no augmentation) for evaluation.
void assemble_batch(const Dataset& d, const int64_t* indices, int N, const Normalization& norm,
                    const Augment& aug, uint64_t seed, int64_t epoch, float* out,
                    int32_t* labels_out);

// The same batch as the data set's bytes, before normalisation: out (c, N, h, w) uint8 after
// augmentation, the padding's pixels 0. assemble_batch's output is, bit for bit,
// normalization_table(norm)[ch * 256 + out[...]] of this one, channel ch's table applied to each
// of its bytes. A GPU step copies these (a quarter of the floats' bytes) and normalises them on
// the device (DeviceStep::prefetch_bytes).
void assemble_batch_bytes(const Dataset& d, const int64_t* indices, int N, const Augment& aug,
                          uint64_t seed, int64_t epoch, uint8_t* out, int32_t* labels_out);

// Throws sq::Error naming d unless norm has a mean and a deviation for each of d's channels.
void check_normalization(const Dataset& d, const Normalization& norm);

// Pixel value -> normalised float, channel by channel: C x 256 floats, element ch * 256 + v =
// (v / 255 - mean[ch]) / stddev[ch], computed in double and rounded once.
std::vector<float> normalization_table(const Normalization& norm);

}  // namespace sq
