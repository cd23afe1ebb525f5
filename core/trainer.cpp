#include "core/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <optional>
#include <nlohmann/json.hpp>
#include <sys/stat.h>
#include <zlib.h>

#include <csignal>

#include "comm/reducer.h"
#include "core/device_step.h"
#include "core/checkpoint.h"
#include "core/compress.h"
#include "core/safetensors.h"
#include "core/error.h"
#include "core/rng.h"

namespace sq {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Running sums of one epoch's training metrics (kept in the checkpoint for exact resume).
struct EpochSums {
  double loss = 0, correct = 0, seen = 0;
  int64_t clipped = 0;  // steps whose gradient norm was clipped
};

std::string fmt17(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

double parse_double(const Metadata& m, const std::string& key, const std::string& path) {
  auto it = m.find(key);
  if (it == m.end()) fail(path, ": checkpoint lacks metadata '", key, "'");
  try {
    size_t used = 0;
    double v = std::stod(it->second, &used);
    if (used != it->second.size()) throw std::invalid_argument("trailing");
    return v;
  } catch (const std::exception&) {
    fail(path, ": checkpoint metadata '", key, "' is not a number: '", it->second, "'");
  }
}

// A running sum of the checkpoint: finite and non-negative (NaN would poison the epoch's metrics).
double parse_sum(const Metadata& m, const std::string& key, const std::string& path) {
  const double v = parse_double(m, key, path);
  if (!(v >= 0) || !std::isfinite(v))
    fail(path, ": checkpoint metadata '", key, "' must be a finite number >= 0, got '", m.at(key), "'");
  return v;
}

// A count of the checkpoint: a whole number in [0, 2^53] (int64_t(1e30) or int64_t(nan) is
// undefined, and 2.5 steps is no step).
int64_t parse_count(const Metadata& m, const std::string& key, const std::string& path) {
  const double v = parse_sum(m, key, path);
  if (v != std::floor(v) || v > 9007199254740992.0)
    fail(path, ": checkpoint metadata '", key, "' must be a whole number, got '", m.at(key), "'");
  return int64_t(v);
}

void make_dirs(const std::string& dir) {
  std::string cur;
  for (size_t i = 0; i <= dir.size(); ++i) {
    if (i == dir.size() || dir[i] == '/') {
      if (!cur.empty() && ::mkdir(cur.c_str(), 0755) != 0) {
        const int err = errno;
        struct stat st;
        if (err != EEXIST) fail(cur, ": cannot create directory: ", std::strerror(err));
        if (::stat(cur.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
          fail(cur, ": exists and is not a directory");
      }
    }
    if (i < dir.size()) cur += dir[i];
  }
}

// One line appended to (or, with trunc, starting) a metrics file; a failed write is an error,
// not a silently missing line.
void write_line(const std::string& path, std::ios::openmode mode, const std::string& line) {
  std::ofstream f(path, mode);
  if (f.is_open() && !line.empty()) f << line << "\n";
  if (f.is_open()) f.close();
  if (f.fail()) fail(path, ": cannot write: ", std::strerror(errno));
}

// A data set's identity, kept in the checkpoint: the sample count and a CRC-32 of the images and
// labels of its first n samples (all if n is negative). --resume on other training data would go
// on silently with another schedule (steps per epoch) and another normalization.
nlohmann::json data_fingerprint(const Dataset& d, int64_t n = -1) {
  if (n < 0 || n > d.n) n = d.n;
  const size_t per_image = d.n > 0 ? d.images.size() / size_t(d.n) : 0;
  uLong crc = crc32_z(0, Z_NULL, 0);
  crc = crc32_z(crc, d.images.data(), per_image * size_t(n));
  crc = crc32_z(crc, reinterpret_cast<const Bytef*>(d.labels.data()), size_t(n) * sizeof(int32_t));
  char hex[16];
  std::snprintf(hex, sizeof hex, "%08lx", static_cast<unsigned long>(crc));
  return {{"samples", n}, {"crc32", hex}};
}

std::string describe_fingerprint(const nlohmann::json& j) {
  if (!j.is_object() || !j.contains("samples") || !j.contains("crc32")) return j.dump();
  return str(j["samples"].dump(), " samples, CRC-32 ", j["crc32"].is_string() ? j["crc32"].get<std::string>() : j["crc32"].dump());
}

bool is_regular_file(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// On --resume, the metrics file keeps the epochs the checkpoint holds. An epoch's line is
// written before its checkpoint, so a run stopped between the two would log that epoch again;
// a line torn by the stop is dropped too. Returns the number of lines dropped.
int64_t trim_metrics(const std::string& path, int64_t step) {
  std::ifstream in(path, std::ios::binary);
  if (!in.is_open()) return 0;  // none here yet: the resumed run starts one
  const std::string text{std::istreambuf_iterator<char>(in), {}};
  if (in.bad()) fail(path, ": cannot read: ", std::strerror(errno));
  std::string kept;
  int64_t dropped = 0;
  for (size_t at = 0; at < text.size();) {
    size_t end = text.find('\n', at);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(at, end - at);
    at = end + 1;
    if (line.empty()) continue;
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    const bool keep = j.is_object() && j.contains("step") && j["step"].is_number_integer() &&
                      j["step"].get<int64_t>() <= step;
    if (keep) kept += line + "\n";
    dropped += !keep;
  }
  // Rewritten also where only the last line's newline is missing: the next line appended would
  // join it.
  if (kept != text) {
    struct stat st;
    const bool had_mode = ::stat(path.c_str(), &st) == 0;
    atomic_write_file(path, kept.data(), kept.size());
    if (had_mode) ::chmod(path.c_str(), st.st_mode & 07777);  // as it was (best effort)
  }
  return dropped;
}

}  // namespace

void TrainConfig::validate() const {
  if (epochs < 1) fail("--epochs must be at least 1, got ", epochs);
  if (batch < 1) fail("--batch-size must be at least 1, got ", batch);
  if (batch > 65536) fail("--batch-size must be at most 65536, got ", batch);
  if (!(momentum >= 0.0 && momentum < 1.0)) fail("--momentum must be in [0, 1), got ", momentum);
  if (!(weight_decay >= 0.0 && std::isfinite(weight_decay)))
    fail("--weight-decay must be a finite number >= 0, got ", weight_decay);
  if (!(clip_grad_norm >= 0.0 && std::isfinite(clip_grad_norm)))
    fail("--clip-grad-norm must be a finite number >= 0 (0: off), got ", clip_grad_norm);
  if (init != "torchvision" && init != "xavier" && init != "lsuv")
    fail("unknown --init '", init, "' (known: torchvision, xavier, lsuv)");
  if (stem != "auto" && stem != "imagenet" && stem != "small")
    fail("unknown --stem '", stem, "' (known: auto, imagenet, small)");
  if (augment.crop_pad < 0 || augment.crop_pad > 64)
    fail("--crop-pad must be in [0, 64], got ", augment.crop_pad);
  if (train_limit < 0) fail("--train-limit must not be negative, got ", train_limit);
  if (test_limit < 0) fail("--test-limit must not be negative, got ", test_limit);
  sq::validate(schedule);
  // The model's own metaparameters are checked once the data set fixes its input shape.
}

nlohmann::json to_json(const TrainConfig& c) {
  const char* fmt = c.data == DataFormat::kFashionMnist ? "fashion-mnist"
                    : c.data == DataFormat::kMnist      ? "mnist"
                                                        : "cifar10";
  return {{"model", to_json(c.model)},
          {"stem", c.stem},
          {"dataset", fmt},
          {"epochs", c.epochs},
          {"batch", c.batch},
          {"schedule", {{"kind", c.schedule.kind}, {"lr", c.schedule.lr},
                        {"warmup", c.schedule.warmup}, {"step_size", c.schedule.step_size},
                        {"gamma", c.schedule.gamma}}},
          {"momentum", c.momentum},
          {"weight_decay", c.weight_decay},
          {"clip_grad_norm", c.clip_grad_norm},
          {"init", c.init},
          {"seed", c.seed},
          {"crop_pad", c.augment.crop_pad},
          {"hflip", c.augment.hflip},
          {"shuffle", c.shuffle},
          {"train_limit", c.train_limit},
          {"test_limit", c.test_limit}};
}

TrainConfig train_config_from_json(const nlohmann::json& j) {
  TrainConfig c;
  try {
    c.model = model_config_from_json(json_field(j, "model"));
    c.stem = json_string(j, "stem");
    c.data = parse_data_format(json_string(j, "dataset"));
    c.epochs = json_int(j, "epochs");
    c.batch = json_int(j, "batch");
    const nlohmann::json& s = json_field(j, "schedule");
    c.schedule.kind = json_string(s, "kind");
    c.schedule.lr = json_number(s, "lr");
    c.schedule.warmup = json_integer(s, "warmup");
    c.schedule.step_size = json_integer(s, "step_size");
    c.schedule.gamma = json_number(s, "gamma");
    c.momentum = json_number(j, "momentum");
    c.weight_decay = json_number(j, "weight_decay");
    c.clip_grad_norm = json_number(j, "clip_grad_norm");
    c.init = json_string(j, "init");
    c.seed = json_unsigned(j, "seed");
    c.augment.crop_pad = json_int(j, "crop_pad");
    c.augment.hflip = json_bool(j, "hflip");
    c.shuffle = json_bool(j, "shuffle");
    c.train_limit = json_integer(j, "train_limit");
    c.test_limit = json_integer(j, "test_limit");
    c.validate();
  } catch (const Error& e) {
    fail("training config: ", e.what());
  }
  return c;
}

void adapt_model_to_data(ModelConfig& m, const std::string& stem, const Dataset& d) {
  m.in_c = d.c;
  m.in_h = d.h;
  m.in_w = d.w;
  m.num_classes = d.num_classes;
  if (stem == "auto")
    m.stem = std::max(d.h, d.w) <= 64 ? Stem::kSmall : Stem::kImageNet;
  else
    m.stem = parse_stem(stem);
  m.validate();
}

FaultInjection parse_fault(const std::string& s) {
  FaultInjection f;
  long long step = -1;
  int rank = -1;
  char kind[16] = {0};
  if (std::sscanf(s.c_str(), "%d:%lld:%15s", &rank, &step, kind) != 3 || rank < 0 || step < 0)
    fail("--inject-fault must look like RANK:STEP:KIND, got '", s, "'");
  const std::string k = kind;
  if (k == "throw") f.kind = FaultInjection::Kind::kThrow;
  else if (k == "kill") f.kind = FaultInjection::Kind::kKill;
  else if (k == "nan") f.kind = FaultInjection::Kind::kNan;
  else if (k == "desync") f.kind = FaultInjection::Kind::kDesync;
  else fail("--inject-fault kind must be throw, kill, nan or desync, got '", k, "'");
  f.rank = rank;
  f.step = step;
  return f;
}

EvalResult evaluate(Model& model, const float* params, const Dataset& test,
                    const Normalization& norm, int batch, int64_t limit, Communicator* comm,
                    DeviceStep* device) {
  const int64_t n = limit > 0 ? std::min(limit, test.n) : test.n;
  const int world = comm ? comm->size() : 1, rank = comm ? comm->rank() : 0;
  const int64_t s0 = n * rank / world, s1 = n * (rank + 1) / world;
  if (!device) batch = std::min(batch, model.max_batch());
  const int K = model.config().num_classes;
  const size_t in_per_sample = size_t(test.c) * test.h * test.w;
  std::vector<float> input(in_per_sample * batch);
  std::vector<int32_t> labels(batch);
  std::vector<int64_t> idx(batch);
  std::vector<float> dlogits(size_t(K) * batch);
  EvalResult r;
  double loss = 0;
  int64_t correct = 0;
  for (int64_t start = s0; start < s1; start += batch) {
    const int N = int(std::min<int64_t>(batch, s1 - start));
    for (int i = 0; i < N; ++i) idx[i] = start + i;
    assemble_batch(test, idx.data(), N, norm, Augment{}, 0, 0, input.data(), labels.data());
    if (device) {
      double st[2] = {0, 0};
      device->evaluate_batch(input.data(), labels.data(), N, st);
      loss += st[0];
      correct += int64_t(st[1]);
      continue;
    }
    const float* logits = model.forward(params, input.data(), N, false, nullptr);
    int c = 0;
    loss += softmax_xent(N, K, logits, labels.data(), 1.0f, dlogits.data(), &c);
    correct += c;
  }
  if (world > 1) {
    double sums[2] = {loss, double(correct)};
    comm->allreduce_sum(sums, 2);
    loss = sums[0];
    correct = int64_t(sums[1]);
  }
  r.samples = n;
  r.loss = n ? loss / double(n) : 0.0;
  r.accuracy = n ? double(correct) / double(n) : 0.0;
  return r;
}

void ParamConstraint::on_gradient_device(float*, void*) {
  fail("this training constraint has no GPU implementation; train on the CPU");
}
void ParamConstraint::after_update_device(float*, float*, const float*, double, void*) {
  fail("this training constraint has no GPU implementation; train on the CPU");
}

TrainResult train(TrainConfig cfg, const RunOptions& opt, Communicator& comm) {
  const bool root = comm.rank() == 0;
  const int world = comm.size();
  if (opt.initial_params && !opt.resume.empty()) fail("initial parameters and --resume exclude each other");
  Metadata resume_meta;
  if (!opt.resume.empty()) {
    // The checkpoint's settings define the run; only how it runs comes from the command line.
    if (is_compressed_file(opt.resume))
      fail(opt.resume, ": a compressed model (.sqz), not a training checkpoint (--resume takes the "
           "checkpoint.safetensors that train writes into --out)");
    resume_meta = read_safetensors(opt.resume).metadata;
    auto it = resume_meta.find("squeeze.train_config");
    const auto kind = resume_meta.find("squeeze.kind");
    if (it == resume_meta.end() && kind != resume_meta.end() && kind->second == "weights")
      fail(opt.resume, ": a weights file, not a training checkpoint (--resume takes the "
           "checkpoint.safetensors that train writes beside weights.safetensors)");
    if (it == resume_meta.end()) fail(opt.resume, ": checkpoint lacks its training config");
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(it->second);
    } catch (const nlohmann::json::exception& e) {
      fail(opt.resume, ": training config is not valid JSON: ", e.what());
    }
    // Where the data lies is not a setting of the run (the checkpoint does not hold it).
    const std::string data_dir = cfg.data_dir;
    try {
      cfg = train_config_from_json(j);
    } catch (const Error& e) {
      fail(opt.resume, ": ", e.what());
    }
    cfg.data_dir = data_dir;
  }
  cfg.validate();
  if (cfg.batch % world != 0 && !opt.resume.empty())
    fail(opt.resume, ": the run's global batch ", cfg.batch, " is not divisible by the world size ",
         world, " (a resumed run keeps its batch: resume it on a world size that divides ", cfg.batch, ")");
  if (cfg.batch % world != 0)
    fail("--batch-size ", cfg.batch, " is not divisible by the world size ", world);
  if (opt.fault.kind != FaultInjection::Kind::kNone && opt.fault.rank >= world)
    fail("--inject-fault: rank ", opt.fault.rank, " does not exist (world size ", world, ")");

  // Before the data and the initialisation (LSUV's forward passes take seconds on the CPU): a
  // run that cannot use its GPU says so at once.
  if (opt.cuda) use_cuda_device(opt.gpu);

  const std::string dir = cfg.data_dir.empty() ? default_data_dir(cfg.data) : cfg.data_dir;
  DataSplit data = load_dataset(cfg.data, dir);
  if (cfg.train_limit > 0 && cfg.train_limit < data.train.n) {
    data.train.n = cfg.train_limit;
    data.train.images.resize(size_t(cfg.train_limit) * data.train.c * data.train.h * data.train.w);
    data.train.labels.resize(size_t(cfg.train_limit));
  }
  adapt_model_to_data(cfg.model, cfg.stem, data.train);
  const Normalization norm = opt.normalization ? *opt.normalization : compute_normalization(data.train);
  const nlohmann::json norm_json = {{"mean", norm.mean}, {"std", norm.stddev}};
  // Only where a checkpoint is written or read (a CRC over the whole training set).
  const bool fingerprinted = !opt.resume.empty() || !opt.out_dir.empty();
  const nlohmann::json fingerprint = fingerprinted ? data_fingerprint(data.train) : nlohmann::json();
  // The test samples the epochs are evaluated on (after --test-limit), so that one metrics.jsonl
  // never mixes two test sets.
  const int64_t n_test = cfg.test_limit > 0 ? std::min(cfg.test_limit, data.test.n) : data.test.n;
  const nlohmann::json test_fingerprint =
      fingerprinted ? data_fingerprint(data.test, n_test) : nlohmann::json();
  if (!opt.resume.empty()) {
    auto held_json = [&](const char* key) {
      const auto it = resume_meta.find(key);
      if (it == resume_meta.end()) return nlohmann::json();
      nlohmann::json j = nlohmann::json::parse(it->second, nullptr, false);
      if (j.is_discarded()) fail(opt.resume, ": checkpoint metadata '", key, "' is not valid JSON");
      return j;
    };
    const nlohmann::json held = held_json("squeeze.train_data");
    if (!held.is_null() && held != fingerprint)
      fail(opt.resume, ": trained on another training set (", describe_fingerprint(held), ") than the one in ",
           dir, " (", describe_fingerprint(fingerprint), "); resume with the data it was trained on");
    // Checkpoints from before 2026-12-04 hold no test fingerprint.
    const nlohmann::json held_test = held_json("squeeze.test_data");
    if (!held_test.is_null() && held_test != test_fingerprint)
      fail(opt.resume, ": evaluated on another test set (", describe_fingerprint(held_test),
           ") than the one in ", dir, " (", describe_fingerprint(test_fingerprint),
           "); its metrics would mix two test sets: resume with the data it was trained on");
    // A checkpoint from before the fingerprint: its normalization is the training set's.
    const auto nit = resume_meta.find("squeeze.normalization");
    if (held.is_null() && nit != resume_meta.end() && nit->second != norm_json.dump())
      fail(opt.resume, ": trained on another training set (its normalization ", nit->second,
           " is not that of the data in ", dir, ", ", norm_json.dump(), "); resume with the data it was trained on");
  }

  const int local_batch = cfg.batch / world;
  // Sized before anything is allocated: the parameters, gradients and momentum here, the
  // activations in the model.
  const size_t n_params = Model(cfg.model, 1, false).layout().total;
  require_memory(3.0 * double(n_params) * sizeof(float),
                 str("the parameters, gradients and momentum (", n_params, " values each)"));
  // On the GPU the host model only lends its layer table and layout (and LSUV a temporary one).
  Model model(cfg.model, opt.cuda ? 1 : local_batch);
  const ParamLayout& layout = model.layout();
  std::vector<float> params(layout.total), grads(layout.total), momentum(layout.total, 0.0f);

  const int64_t n_train = data.train.n;
  if (n_train < world) fail("more ranks (", world, ") than training samples (", n_train, ")");
  const int64_t steps_per_epoch = (n_train + cfg.batch - 1) / cfg.batch;
  const int64_t total_steps = steps_per_epoch * cfg.epochs;
  if (opt.fault.kind != FaultInjection::Kind::kNone && opt.fault.step >= total_steps)
    fail("--inject-fault: step ", opt.fault.step, " is past the run's last (", total_steps, " steps)");

  int64_t step = 0;
  EpochSums sums;
  if (!opt.resume.empty()) {
    load_checkpoint(opt.resume, layout, params.data(), momentum.data());
    step = parse_count(resume_meta, "squeeze.step", opt.resume);
    sums.loss = parse_sum(resume_meta, "squeeze.epoch_loss_sum", opt.resume);
    sums.correct = parse_sum(resume_meta, "squeeze.epoch_correct", opt.resume);
    sums.seen = parse_sum(resume_meta, "squeeze.epoch_seen", opt.resume);
    sums.clipped = parse_count(resume_meta, "squeeze.epoch_clipped", opt.resume);
    if (step < 0 || step > total_steps) fail(opt.resume, ": step ", step, " outside the run");
  } else if (opt.initial_params) {
    if (opt.initial_params->size() != params.size())
      fail("initial parameters: ", opt.initial_params->size(), " values for a model of ", params.size());
    params = *opt.initial_params;
  } else {
    model.init_params(params.data(), cfg.init, cfg.seed);
    if (cfg.init == "lsuv") {
      // Rescaled on the first global batch of epoch 1, each rank forwarding its share and the
      // statistics summed over ranks: the same at any world size.
      const int64_t g1 = std::min<int64_t>(cfg.batch, n_train);
      const int64_t r0 = g1 * comm.rank() / world, r1 = g1 * (comm.rank() + 1) / world;
      const int n = int(r1 - r0);
      const std::vector<int64_t> first = epoch_order(n_train, cfg.seed, 0, cfg.shuffle);
      std::vector<float> x(size_t(data.train.c) * data.train.h * data.train.w * n);
      std::vector<int32_t> y(n);
      assemble_batch(data.train, first.data() + r0, n, norm, Augment{}, cfg.seed, 0, x.data(),
                     y.data());
      std::optional<Model> lsuv_model;  // the GPU run's host model is too small for the batch
      if (n > model.max_batch()) lsuv_model.emplace(cfg.model, n);
      (lsuv_model ? *lsuv_model : model)
          .lsuv_rescale(params.data(), x.data(), n, 0.5,
                        [&](double* v, size_t k) { comm.allreduce_sum(v, k); });
    }
  }
  const int64_t first_step = step;
  comm.broadcast(params.data(), params.size(), 0);
  comm.broadcast(momentum.data(), momentum.size(), 0);
  verify_replicas(comm, params.data(), params.size(), "at start");
  // --device cuda: parameters, gradients and momentum live on the GPU from here on; the host
  // vectors are refreshed where the host needs them (checkpoints, replica checks, the result).
  std::unique_ptr<DeviceStep> dev;
  if (opt.cuda) {
    dev = make_cuda_step(cfg.model, local_batch, opt.gpu);
    dev->upload(params.data(), momentum.data());
  }
  auto sync_host = [&] {
    if (dev) dev->download(params.data(), momentum.data());
  };
  // Several ranks on GPUs without NCCL: the gradient is reduced over MPI in pinned host memory.
  float* host_grads = dev && world > 1 && !comm.device_buffers() ? dev->host_staging() : grads.data();
  // A cap past the model's size is one bucket, as 0 is (and keeps size_t's conversion defined).
  const double cap_floats = std::min(opt.bucket_mib * 1048576.0 / 4, double(layout.total));
  GradReducer reducer(comm, host_grads, plan_buckets(tensor_bounds(layout), size_t(cap_floats)),
                      ReduceOp::kSum, opt.overlap);
  // With a communicator that reduces device buffers (NCCL), the same buckets of the device
  // gradients, started from the GPU backward's hook.
  std::optional<GradReducer> dev_reducer;
  if (dev && comm.device_buffers()) {
    comm.set_compute_stream(dev->stream());
    dev_reducer.emplace(comm, dev->device_grads(), reducer.plan(), ReduceOp::kSum, opt.overlap);
  }

  std::string metrics_path, ckpt_path, weights_path;
  if (root && !opt.out_dir.empty()) {
    std::string out = opt.out_dir;  // "runs/x/" names its files runs/x/..., not runs/x//...
    while (out.size() > 1 && out.back() == '/') out.pop_back();
    make_dirs(out);
    metrics_path = out + "/metrics.jsonl";
    ckpt_path = out + "/checkpoint.safetensors";
    weights_path = out + "/weights.safetensors";
    // An output that cannot be written is refused now, before the first epoch's work.
    check_writable(ckpt_path);
    check_writable(weights_path);
    // Another run's files are not overwritten unless asked: a fresh run would truncate their
    // metrics now and replace their checkpoint at its first epoch's end.
    const bool continues_this_out = !opt.resume.empty() && same_file(opt.resume, ckpt_path);
    if (!opt.overwrite && !continues_this_out)
      for (const std::string& f : {ckpt_path, metrics_path, weights_path})
        if (is_regular_file(f))
          fail("--out ", out, " holds another run (", f, "); ",
               is_regular_file(ckpt_path) ? "continue it with --resume " + ckpt_path + ", pass"
                                          : std::string("it has no checkpoint to continue from: pass"),
               " --overwrite to replace it, or choose another --out");
    if (continues_this_out) {
      const int64_t dropped = trim_metrics(metrics_path, step);
      if (dropped && !opt.quiet)
        std::printf("%s: dropped %lld line(s) past the checkpoint's step %lld or unreadable\n",
                    metrics_path.c_str(), (long long)dropped, (long long)step);
    }
    write_line(metrics_path, continues_this_out ? std::ios::app : std::ios::trunc, "");
  }
  const nlohmann::json cfg_json = to_json(cfg);
  auto meta_common = [&]() {
    Metadata m;
    m["squeeze.model"] = to_json(cfg.model).dump();
    m["squeeze.normalization"] = norm_json.dump();
    return m;
  };
  TrainResult result;
  auto save = [&](int64_t at_step) {
    if (ckpt_path.empty()) return;
    Metadata m = meta_common();
    m["squeeze.train_config"] = cfg_json.dump();
    m["squeeze.train_data"] = fingerprint.dump();
    m["squeeze.test_data"] = test_fingerprint.dump();
    m["squeeze.step"] = std::to_string(at_step);
    m["squeeze.epoch_loss_sum"] = fmt17(sums.loss);
    m["squeeze.epoch_correct"] = fmt17(sums.correct);
    m["squeeze.epoch_seen"] = fmt17(sums.seen);
    m["squeeze.epoch_clipped"] = std::to_string(sums.clipped);
    sync_host();
    save_checkpoint(ckpt_path, layout, params.data(), momentum.data(), m);
    result.checkpoint = ckpt_path;
  };

  if (root && !opt.quiet) {
    std::printf("model %s (%s stem, bypass %s): %zu parameters, input %dx%dx%d, %d classes\n",
                arch_name(cfg.model.arch).c_str(), stem_name(cfg.model.stem).c_str(),
                bypass_name(cfg.model.bypass).c_str(), layout.total, cfg.model.in_c,
                cfg.model.in_h, cfg.model.in_w, cfg.model.num_classes);
    std::printf("data %s: %lld train, %lld test from %s; batch %d, %lld steps/epoch, %d epochs\n",
                data.train.name.c_str(), (long long)n_train, (long long)n_test, dir.c_str(),
                cfg.batch, (long long)steps_per_epoch, cfg.epochs);
    if (!dev)
      std::printf("allocating %.1f MiB for activations, gradients and workspace\n",
                  model.arena_bytes() / 1048576.0);
    if (dev)
      std::printf("training on %s: %.1f MiB of device memory\n", dev->name().c_str(),
                  dev->device_bytes() / 1048576.0);
    if (world > 1) {
      // A bucket closes at a tensor's end, so it can pass the cap: the largest is what is sent.
      size_t largest = 0;
      for (const Bucket& b : reducer.plan()) largest = std::max(largest, b.end - b.begin);
      const size_t n_buckets = reducer.plan().size();
      char largest_text[64] = "";
      if (n_buckets > 1)
        std::snprintf(largest_text, sizeof largest_text, "s (the largest %.2f MiB)", largest * 4.0 / 1048576.0);
      std::printf("%d ranks over %s: local batch %d, gradient of %.2f MiB in %zu bucket%s, %s\n",
                  world, comm.name().c_str(), local_batch, layout.total * 4.0 / 1048576.0, n_buckets,
                  largest_text, opt.overlap ? "overlapped with backward" : "after backward");
    }
    if (!opt.resume.empty()) std::printf("resumed from %s at step %lld\n", opt.resume.c_str(), (long long)step);
    if (!opt.resume.empty() && step == total_steps)
      std::printf("its run is complete (step %lld of %lld): nothing left to train\n", (long long)step,
                  (long long)total_steps);
    else if (!opt.resume.empty() && opt.max_steps > 0 && opt.max_steps <= step)
      std::printf("--max-steps %lld is not past the checkpoint's step: nothing to train\n",
                  (long long)opt.max_steps);
    std::fflush(stdout);
  }

  const int K = cfg.model.num_classes;
  const size_t in_per_sample = size_t(data.train.c) * data.train.h * data.train.w;
  // A step's batch on the host: floats for the CPU, the data set's bytes for the GPU, which
  // normalises them itself (a quarter of the bytes to copy; DeviceStep::prefetch_bytes). On the
  // GPU, `next` receives the following step's batch while the GPU computes the current one (the
  // host's share of the step overlaps the device's).
  struct HostBatch {
    std::vector<float> input;
    std::vector<uint8_t> bytes;
    std::vector<int32_t> labels;
    std::vector<uint64_t> keys;
    int64_t step = -1;  // whose batch it holds
  };
  auto make_batch = [&] {
    return HostBatch{std::vector<float>(dev ? 0 : in_per_sample * local_batch),
                     std::vector<uint8_t>(dev ? in_per_sample * local_batch : 0),
                     std::vector<int32_t>(local_batch), std::vector<uint64_t>(local_batch)};
  };
  if (dev) check_normalization(data.train, norm);
  const std::vector<float> norm_table = dev ? normalization_table(norm) : std::vector<float>();
  HostBatch cur = make_batch(), next = dev ? make_batch() : HostBatch{};
  std::vector<float> dlogits(size_t(K) * local_batch);

  auto epoch_t0 = Clock::now();
  int64_t epoch_images = 0;
  auto last_progress = Clock::now();
  const int64_t stop_at = opt.max_steps > 0 ? std::min(opt.max_steps, total_steps) : total_steps;
  std::vector<int64_t> order;
  int64_t order_epoch = -1;
  // This rank's share of step s: the global batch is [b*B, min((b+1)*B, n)) of the epoch's
  // order; the ragged last batch is smaller and split as evenly as possible; this rank takes its
  // contiguous share [r0, r0 + N).
  struct Share {
    int64_t epoch, gN, r0;
    int N;
  };
  auto share_of = [&](int64_t s) {
    const int64_t epoch = s / steps_per_epoch, b = s % steps_per_epoch;
    const int64_t g0 = b * cfg.batch, g1 = std::min(n_train, g0 + cfg.batch), gN = g1 - g0;
    const int64_t r0 = g0 + gN * comm.rank() / world, r1 = g0 + gN * (comm.rank() + 1) / world;
    return Share{epoch, gN, r0, int(r1 - r0)};
  };
  auto assemble = [&](int64_t s, HostBatch& hb) {
    const Share sh = share_of(s);
    if (order_epoch != sh.epoch) {
      order = epoch_order(n_train, cfg.seed, sh.epoch, cfg.shuffle);
      order_epoch = sh.epoch;
    }
    if (sh.N > 0) {
      if (dev)
        assemble_batch_bytes(data.train, order.data() + sh.r0, sh.N, cfg.augment, cfg.seed, sh.epoch,
                             hb.bytes.data(), hb.labels.data());
      else
        assemble_batch(data.train, order.data() + sh.r0, sh.N, norm, cfg.augment, cfg.seed,
                       sh.epoch, hb.input.data(), hb.labels.data());
      for (int i = 0; i < sh.N; ++i)
        hb.keys[i] = sample_key(cfg.seed, RngStream::kDropout, uint64_t(sh.epoch),
                                uint64_t(order[sh.r0 + i]));
    }
    hb.step = s;
  };

  int64_t prefetched = -1;  // the step whose batch the device step holds from prefetch()
  while (step < stop_at) {
    const Share share = share_of(step);
    const int64_t epoch = share.epoch, b = step % steps_per_epoch, gN = share.gN;
    const int N = share.N;
    const double lr = lr_at(cfg.schedule, step, total_steps);

    using Fault = FaultInjection::Kind;
    const Fault fault =
        opt.fault.rank == comm.rank() && opt.fault.step == step ? opt.fault.kind : Fault::kNone;
    if (fault == Fault::kThrow) fail("injected fault at step ", step);
    if (fault == Fault::kKill) std::raise(SIGKILL);
    if (fault == Fault::kDesync) {
      sync_host();
      params[0] += 1.0f;
      if (dev) dev->upload(params.data(), nullptr);
    }
    // Loss sum, correct count; ranks asked to stop, the sum of their signals and of its squares.
    double stats[5] = {0, 0, 0, 0, 0};
    if (cur.step != step) assemble(step, cur);
    if (dev) {
      std::function<void(size_t)> hook;
      if (dev_reducer) hook = [&](size_t offset) { dev_reducer->ready(offset); };
      // The batch is on the device already when the last step prefetched it.
      if (prefetched != step && N > 0)
        dev->prefetch_bytes(cur.bytes.data(), norm_table.data(), cur.labels.data(), cur.keys.data(), N);
      dev->launch(nullptr, nullptr, nullptr, N, 1.0f / float(gN), hook);
      if (step + 1 < stop_at) {  // while the GPU computes this step: the next batch, copied
        assemble(step + 1, next);  // to the device on its own stream
        const int next_n = share_of(step + 1).N;
        if (next_n > 0) {
          dev->prefetch_bytes(next.bytes.data(), norm_table.data(), next.labels.data(), next.keys.data(),
                              next_n);
          prefetched = step + 1;
        }
      }
      if (dev_reducer) dev_reducer->finish();  // device buffers, in place (NCCL)
      dev->finish(stats);
      std::swap(cur, next);
      if (fault == Fault::kNan) stats[0] = std::nan("");
      // Several ranks without NCCL: the gradient goes through the host, after backward.
      if (world > 1 && !dev_reducer)
        dev->reduce_through_host(host_grads, [&](float*) { reducer.finish(); });
    } else {
      std::fill(grads.begin(), grads.end(), 0.0f);
      if (N > 0) {
        const float* logits =
            model.forward(params.data(), cur.input.data(), N, true, cur.keys.data());
        int correct = 0;
        stats[0] = softmax_xent(N, K, logits, cur.labels.data(), 1.0f / float(gN), dlogits.data(),
                                &correct);
        stats[1] = correct;
        model.backward(params.data(), dlogits.data(), grads.data(), N, cur.keys.data(),
                       [&](size_t offset) { reducer.ready(offset); });
      }
      if (fault == Fault::kNan) stats[0] = std::nan("");
      reducer.finish();
    }
    if (opt.constraint) {
      if (dev)
        opt.constraint->on_gradient_device(dev->device_grads(), dev->stream());
      else
        opt.constraint->on_gradient(grads.data());
    }
    const int asked = opt.stop_signal ? int(*opt.stop_signal) : 0;
    stats[2] = asked ? 1.0 : 0.0;
    stats[3] = asked;
    stats[4] = double(asked) * asked;
    comm.allreduce_sum(stats, 5);
    const bool stop_requested = stats[2] > 0;  // the same on every rank
    if (!std::isfinite(stats[0]))
      fail("training diverged: loss is ", stats[0], " at step ", step, " (epoch ", epoch + 1,
           "); try a lower --lr");
    if (cfg.clip_grad_norm > 0) {  // on the averaged gradient: the same on every rank
      const double norm =
          std::sqrt(dev ? dev->grad_sq_norm() : sum_of_squares(grads.data(), grads.size()));
      if (norm > cfg.clip_grad_norm) {
        const float scale = float(cfg.clip_grad_norm / norm);
        if (dev)
          dev->scale_grads(scale);
        else
          scale_inplace(grads.data(), scale, grads.size());
        ++sums.clipped;
      }
    }
    if (dev)
      dev->sgd(float(lr), float(cfg.momentum), float(cfg.weight_decay));
    else
      sgd_momentum_update(params.size(), params.data(), grads.data(), momentum.data(), float(lr),
                          float(cfg.momentum), float(cfg.weight_decay));
    if (opt.constraint) {
      if (dev)
        opt.constraint->after_update_device(dev->device_params(), dev->device_momentum(),
                                            dev->device_grads(), lr, dev->stream());
      else
        opt.constraint->after_update(params.data(), momentum.data(), grads.data(), lr);
    }
    sums.loss += stats[0];
    sums.correct += stats[1];
    sums.seen += double(gN);
    epoch_images += gN;
    ++step;
    if (opt.check_replicas_every > 0 && step % opt.check_replicas_every == 0) {
      sync_host();
      verify_replicas(comm, params.data(), params.size(), str("after step ", step));
    }

    if (root && opt.progress && seconds_since(last_progress) > 0.5) {
      last_progress = Clock::now();
      std::printf("\r\033[Kepoch %lld/%d  step %lld/%lld  loss %.4f  acc %.2f%%  %.0f img/s",
                  (long long)epoch + 1, cfg.epochs, (long long)b + 1, (long long)steps_per_epoch,
                  sums.loss / sums.seen, 100.0 * sums.correct / sums.seen,
                  epoch_images / seconds_since(epoch_t0));
      std::fflush(stdout);
    }

    const bool epoch_end = step % steps_per_epoch == 0;
    if (epoch_end) {
      const double train_seconds = seconds_since(epoch_t0);
      EpochMetrics em;
      em.epoch = epoch + 1;
      em.step = step;
      em.lr = lr;
      em.train_loss = sums.loss / sums.seen;
      em.train_acc = sums.correct / sums.seen;
      em.images_per_s = epoch_images / train_seconds;
      em.clipped_steps = sums.clipped;
      EvalResult ev =
          evaluate(model, params.data(), data.test, norm, local_batch, cfg.test_limit, &comm,
                   dev.get());
      em.test_loss = ev.loss;
      em.test_acc = ev.accuracy;
      em.seconds = seconds_since(epoch_t0);
      result.epochs.push_back(em);
      sums = EpochSums{};
      if (root) {
        if (opt.progress) std::printf("\r\033[K");
        if (!opt.quiet) {
          std::printf("epoch %3lld  loss %.4f  train acc %.4f  test loss %.4f  test acc %.4f  "
                      "lr %.5f  %.0f img/s  %.1f s\n",
                      (long long)em.epoch, em.train_loss, em.train_acc, em.test_loss, em.test_acc,
                      em.lr, em.images_per_s, em.seconds);
          if (cfg.clip_grad_norm > 0)
            std::printf("           gradient norm clipped to %g in %lld of %lld steps\n",
                        cfg.clip_grad_norm, (long long)em.clipped_steps,
                        (long long)steps_per_epoch);
          std::fflush(stdout);
        }
        if (!metrics_path.empty()) {
          nlohmann::json j = {{"epoch", em.epoch}, {"step", em.step}, {"lr", em.lr},
                              {"train_loss", em.train_loss}, {"train_acc", em.train_acc},
                              {"test_loss", em.test_loss}, {"test_acc", em.test_acc},
                              {"images_per_s", em.images_per_s}, {"seconds", em.seconds},
                              {"clipped_steps", em.clipped_steps}};
          write_line(metrics_path, std::ios::app, j.dump());
        }
        save(step);
      }
      epoch_t0 = Clock::now();
      epoch_images = 0;
    }
    if (stop_requested && step < total_steps) {  // checkpointed below, where --max-steps stops
      result.stopped = true;
      // One signal where every rank asked got the same: n * sum(s^2) == sum(s)^2 only then (the
      // mean alone took SIGINT and SIGUSR1 on two ranks for SIGABRT).
      const bool one_signal = stats[2] * stats[4] == stats[3] * stats[3];
      result.stop_signal = one_signal ? int(stats[3] / stats[2]) : 0;
      break;
    }
  }
  if (root && opt.progress) std::printf("\r\033[K");
  sync_host();
  if (root && step % steps_per_epoch != 0) save(step);  // stopped mid-epoch (--max-steps)
  if (root && !weights_path.empty()) {
    Metadata m = meta_common();
    export_weights(weights_path, layout, params.data(), m);
  }
  result.steps = step;
  result.total_steps = total_steps;
  result.first_step = first_step;
  result.params = std::move(params);
  result.model = cfg.model;
  return result;
}

}  // namespace sq
