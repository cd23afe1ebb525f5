// safetensors: 8-byte little-endian header length, a JSON header mapping each tensor name to
// {dtype, shape, data_offsets} (plus an optional "__metadata__" string map), then the raw
// little-endian data. The reader validates every field; weights speak PyTorch through it.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace sq {

struct TensorData {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> data;  // converted to float32 whatever the stored dtype
};

struct SafetensorsFile {
  std::map<std::string, std::string> metadata;
  std::vector<TensorData> tensors;  // in data-offset order
  const TensorData* find(const std::string& name) const;
};

struct TensorRef {  // a tensor to write, viewing caller memory
  std::string name;
  std::vector<int64_t> shape;
  const float* data;
};

// Writes F32 tensors, packed in the given order, atomically (see atomic_write_file).
void write_safetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                       const std::map<std::string, std::string>& metadata);

// Reads and validates: file length, header length bounds, JSON syntax, each entry's dtype
// (F32, F64, F16, BF16 accepted and converted to float), shape (non-negative, product fits),
// data_offsets (ordered, in bounds, matching dtype size * element count, tensors contiguous and
// non-overlapping, covering the data section exactly). Any fault: sq::Error "<path>: <what>".
SafetensorsFile read_safetensors(const std::string& path);

// Writes bytes to `path` atomically: a temporary file in the same directory, fsync, rename,
// fsync of the directory. On any failure the old file (if any) is untouched and the
// temporary removed; throws sq::Error naming the path and the errno text. A SIGINT, SIGTERM,
// SIGHUP or SIGXFSZ during the write whose action is the default (death) removes the temporary
// first; where the program handles the signal itself, its handler runs and the write goes on.
// The temporary is `<path>.tmp.<host>.<pid>.XXXXXX`. Temporaries of `path` left by a process of
// this host that no longer exists (SIGKILL, power loss) are removed at the start of the next
// write; another host's are left alone (its pids cannot be checked from here).
void atomic_write_file(const std::string& path, const void* data, size_t size);

// The <host> of atomic_write_file's temporaries: gethostname() with every character other than
// letters, digits and '-' made '_', at most 64 characters.
std::string atomic_write_host();

// Async-signal-safe: removes the temporary of the atomic write in progress, if any. For a signal
// handler about to end the process (squeeze train's, at a second stop signal).
void abandon_atomic_write();

// Whether atomic_write_file(path) can succeed, as far as can be told before the work that makes
// the data: the directory exists and is writable, and `path` is not a directory. Throws sq::Error
// naming the path otherwise, so that a long run is refused at its start rather than at its end.
void check_writable(const std::string& path);

// The directory of `path` ("." for a bare name, "/" for a file at the root).
std::string dir_of(const std::string& path);

// Whether a and b name one existing file (through any links or spellings of the path).
bool same_file(const std::string& a, const std::string& b);

}  // namespace sq
