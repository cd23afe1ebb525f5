#include "launch/compress.h"

#include <sys/stat.h>

#include <cmath>
#include <cstdio>
#include <optional>
#include <nlohmann/json.hpp>

#include "core/checkpoint.h"
#include "core/device_step.h"
#include "core/error.h"
#include "core/safetensors.h"
#include "core/trainer.h"

namespace sq {

namespace {

// A metadata entry of `path` parsed as JSON; a fault names the file and the key.
nlohmann::json metadata_json(const std::string& path, const std::string& key, const std::string& text) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(path, ": metadata ", key, " is not valid JSON: ", e.what());
  }
}

// squeeze.normalization: one finite mean and one positive finite standard deviation (a zero one
// divides every input by zero) per input channel (`channels`; 0: not known, any equal count).
Normalization normalization_from_json(const std::string& path, const nlohmann::json& j, int channels) {
  const std::string where = path + ": metadata squeeze.normalization";
  auto numbers = [&](const char* key, bool positive) {
    const auto it = j.is_object() ? j.find(key) : j.end();
    if (it == j.end() || !it->is_array() || it->empty() || (channels > 0 && int(it->size()) != channels))
      fail(where, ": \"", key, "\" must be an array of one number per input channel",
           channels > 0 ? str(" (", channels, ")") : "");
    std::vector<float> out;
    for (const nlohmann::json& v : *it) {
      const double x = v.is_number() ? v.get<double>() : std::nan("");
      if (!std::isfinite(x) || (positive && !(x > 0)))
        fail(where, ": \"", key, "\" holds ", v.dump(), ", not a ", positive ? "positive " : "", "finite number");
      out.push_back(float(x));
    }
    return out;
  };
  Normalization n;
  n.mean = numbers("mean", false);
  n.stddev = numbers("std", true);
  if (n.mean.size() != n.stddev.size())
    fail(where, ": ", n.mean.size(), " means but ", n.stddev.size(), " standard deviations");
  return n;
}

}  // namespace

LoadedWeights describe_weights(const std::string& path) {
  if (path.empty()) fail("--weights: empty path");
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && st.st_size == 0)
    fail(path, ": empty file (0 bytes), neither a weights file (safetensors) nor a compressed model (.sqz)");
  LoadedWeights w;
  if (is_compressed_file(path)) {
    w.compressed = read_compressed(path);
    w.config = w.compressed->config, w.has_config = true;
    if (!w.compressed->norm_mean.empty())
      w.norm = {w.compressed->norm_mean, w.compressed->norm_std}, w.has_norm = true;
    return w;
  }
  w.file = read_safetensors(path);
  const SafetensorsFile& f = *w.file;
  auto kind = f.metadata.find("squeeze.kind");
  if (kind != f.metadata.end() && kind->second == "checkpoint")
    fail(path, ": the file is a training checkpoint, not a weights file (train writes weights.safetensors "
         "beside it; a checkpoint is for --resume)");
  auto it = f.metadata.find("squeeze.model");
  if (it != f.metadata.end()) {
    const nlohmann::json j = metadata_json(path, "squeeze.model", it->second);
    try {
      w.config = model_config_from_json(j);
    } catch (const Error& e) {
      fail(path, ": ", e.what());
    }
    w.has_config = true;
    // The metadata must describe the tensors the file holds, before anything is sized from it.
    const Model plan(w.config, 1, false);
    size_t held = 0;
    for (const TensorData& t : f.tensors) held += t.data.size();
    if (held != plan.layout().total)
      fail(path, ": metadata squeeze.model describes ", plan.layout().total,
           " parameters but the file holds ", held, " values");
  }
  auto nit = f.metadata.find("squeeze.normalization");
  if (nit != f.metadata.end()) {
    const nlohmann::json j = metadata_json(path, "squeeze.normalization", nit->second);
    w.norm = normalization_from_json(path, j, w.has_config ? w.config.in_c : 0);
    w.has_norm = true;
  }
  return w;
}

std::vector<float> load_weights_for(const LoadedWeights& lw, const std::string& path, const Model& model) {
  if (lw.compressed) {
    const Model plan(lw.compressed->config, 1, false);
    if (plan.layout().total != model.layout().total)
      fail(path, ": compressed model of ", plan.layout().total, " parameters, expected ", model.layout().total);
    return dequantize(*lw.compressed, plan);
  }
  std::vector<float> p(model.layout().total);
  import_weights(*lw.file, path, model.layout(), p.data());
  return p;
}

void check_model_fits(const std::string& what, const ModelConfig& c, const Dataset& test) {
  if (c.in_c != test.c || c.in_h != test.h || c.in_w != test.w || c.num_classes != test.num_classes)
    fail(what, ": model expects ", c.in_c, "x", c.in_h, "x", c.in_w, " inputs and ", c.num_classes,
         " classes; ", test.name, " has ", test.c, "x", test.h, "x", test.w, " and ", test.num_classes);
}

namespace {

std::string with_commas(size_t n) {
  std::string s = std::to_string(n);
  for (int i = int(s.size()) - 3; i > 0; i -= 3) s.insert(size_t(i), ",");
  return s;
}

}  // namespace

int run_compress(const CompressOptions& o, Communicator& comm) {
  if (o.out.empty()) fail("--out: the compressed model file is required");
  SQ_ASSERT(o.batch >= 1, "evaluation batch ", o.batch);
  if (o.retrain_epochs < 0) fail("--retrain-epochs must not be negative, got ", o.retrain_epochs);
  if (o.retrain_epochs > 0 && o.dataset.empty()) fail("--retrain-epochs needs --dataset (the training data)");
  if (o.retrain_batch < 1) fail("--batch-size must be at least 1, got ", o.retrain_batch);
  if (o.retrain_epochs > 0 && o.retrain_batch % comm.size() != 0)
    fail("--batch-size ", o.retrain_batch, " is not divisible by the world size ", comm.size());
  if (!(o.lr > 0) || !std::isfinite(o.lr)) fail("--lr must be a positive finite number, got ", o.lr);
  if (o.cuda && o.dataset.empty()) fail("--device cuda needs --dataset (without data nothing runs on the GPU)");
  if (same_file(o.weights, o.out)) fail("--out ", o.out, " is the --weights file: it would overwrite the weights it compresses");
  if (comm.rank() == 0) check_writable(o.out);  // before the work (retraining may take hours)
  LoadedWeights lw = describe_weights(o.weights);
  if (lw.compressed) fail(o.weights, ": already a compressed model");
  if (!lw.has_config) fail(o.weights, ": no squeeze.model metadata (write it with squeeze train)");
  const Model plan(lw.config, 1, false);
  const std::vector<float> dense = load_weights_for(lw, o.weights, plan);
  const PruneSchedule schedule = parse_schedule(o.prune, plan);
  if (o.bits < 2 || o.bits > 8) fail("--bits must be in [2, 8], got ", o.bits);
  if (o.index_bits < 1 || o.index_bits > 12) fail("--index-bits must be in [1, 12], got ", o.index_bits);
  if (o.prune_steps < 1) fail("--prune-steps must be at least 1, got ", o.prune_steps);
  if (o.prune_steps > 1 && o.retrain_epochs == 0) fail("--prune-steps above 1 needs --retrain-epochs");
  std::vector<uint8_t> mask = magnitude_mask(plan, dense.data(), step_schedule(schedule, 1, o.prune_steps));

  // Stages: dense -> pruned (-> retrained with the mask) -> quantized (-> centroids fine-tuned).
  struct Stage {
    std::string name;
    double acc = -1;
  };
  std::vector<Stage> stages;
  std::optional<DataSplit> data;
  Normalization norm = lw.norm;
  std::optional<Model> eval_model;
  std::unique_ptr<DeviceStep> eval_dev;  // --device cuda: the stages are evaluated on the GPU
  auto accuracy = [&](const std::vector<float>& p) {
    if (!data) return -1.0;
    if (eval_dev) eval_dev->upload(p.data(), nullptr);
    return evaluate(*eval_model, p.data(), data->test, norm, o.batch, 0, &comm, eval_dev.get()).accuracy;
  };
  TrainConfig tc;
  if (!o.dataset.empty()) {
    const DataFormat fmt = parse_data_format(o.dataset);
    data.emplace(load_dataset(fmt, o.data_dir.empty() ? default_data_dir(fmt) : o.data_dir));
    check_model_fits(o.weights, lw.config, data->test);
    if (!lw.has_norm) norm = compute_normalization(data->train);
    eval_model.emplace(lw.config, o.batch, !o.cuda);  // on the GPU: its layer table only
    if (o.cuda) eval_dev = make_cuda_step(lw.config, o.batch, o.gpu);
    tc.data = fmt;
    tc.data_dir = o.data_dir;
    tc.model = lw.config;
    tc.stem = lw.config.stem == Stem::kSmall ? "small" : "imagenet";
    tc.epochs = o.retrain_epochs;
    tc.batch = o.retrain_batch;
    tc.schedule.lr = o.lr;
  }
  RunOptions ro;
  ro.quiet = comm.rank() != 0;
  ro.cuda = o.cuda;
  ro.gpu = o.gpu;
  ro.normalization = &norm;  // the weights' own statistics where they carry them
  auto retrain = [&](const std::vector<float>& start, ParamConstraint& constraint) {
    ro.initial_params = &start;
    ro.constraint = &constraint;
    return train(tc, ro, comm).params;
  };
  stages.push_back({"dense", accuracy(dense)});
  std::vector<float> pruned = dense;
  for (int step = 1; step <= o.prune_steps; ++step) {
    // Each step prunes the retrained weights of the step before: pruned weights are zero and
    // rank last, so each mask lies inside the one before.
    if (step > 1) mask = magnitude_mask(plan, pruned.data(), step_schedule(schedule, step, o.prune_steps));
    const std::string tag = o.prune_steps > 1 ? " (step " + std::to_string(step) + ")" : "";
    apply_mask(pruned.data(), mask);
    stages.push_back({"pruned" + tag, accuracy(pruned)});
    if (o.retrain_epochs > 0) {
      if (comm.rank() == 0) std::printf("retraining the pruned model for %d epoch(s)\n", o.retrain_epochs);
      MaskConstraint mc(mask);
      pruned = retrain(pruned, mc);
      stages.push_back({"retrained" + tag, accuracy(pruned)});
    }
  }
  CompressedModel cm = quantize(plan, pruned.data(), mask, o.bits, o.index_bits);
  if (lw.has_norm || data) cm.norm_mean = norm.mean, cm.norm_std = norm.stddev;
  std::vector<float> quantized = dequantize(cm, plan);
  stages.push_back({"quantized", accuracy(quantized)});
  if (o.retrain_epochs > 0) {
    if (comm.rank() == 0) std::printf("fine-tuning the %d-bit codebooks for %d epoch(s)\n", o.bits, o.retrain_epochs);
    QuantizedConstraint qc(cm, plan, tc.momentum);
    const std::vector<float> tuned = retrain(quantized, qc);
    qc.finish(tuned.data());
    quantized = dequantize(cm, plan);
    stages.push_back({"quantized, fine-tuned", accuracy(quantized)});
  }
  EncodeReport rep;
  if (comm.rank() == 0) write_compressed(o.out, cm, &rep);
  else encode_compressed(cm, &rep);

  if (comm.rank() != 0) return 0;

  // The paper's Table 1: per layer, parameters before and after pruning, bits, bytes.
  std::printf("%-18s %10s %10s %7s %5s %10s\n", "tensor", "params", "kept", "kept%", "bits", "bytes");
  size_t params = 0, kept = 0, entries = 0, weight_bytes = 0, books = 0;
  for (size_t t = 0; t < rep.tensors.size(); ++t) {
    const SectionSize& s = rep.tensors[t];
    std::printf("%-18s %10zu %10zu %6.1f%% %5d %10zu\n", s.name.c_str(), s.params, s.kept,
                100.0 * double(s.kept) / double(std::max<size_t>(s.params, 1)), o.bits, s.total());
    params += s.params, kept += s.kept, entries += s.entries, weight_bytes += s.total();
    books += cm.weights[t].codebook.size() * 4;
  }
  const size_t exact = cm.exact.size();
  std::printf("%-18s %10zu %10zu %6.1f%% %5s %10zu\n", "weights", params, kept,
              100.0 * double(kept) / double(params), "", weight_bytes);
  std::printf("%-18s %10zu %10zu %7s %5d %10zu\n", "biases (exact)", exact, exact, "", 32, rep.exact_bytes);
  std::printf("%-18s %10zu %10zu %6.1f%%\n\n", "total", params + exact, kept + exact,
              100.0 * double(kept + exact) / double(params + exact));
  // Sizes after each stage: dense fp32; pruned (fp32 values with their relative indices, filler
  // entries included); quantized (b-bit codes and indices, the codebooks); Huffman-coded (the file).
  const double dense_b = 4.0 * double(params + exact);
  const double pruned_b = double(entries) * (32 + o.index_bits) / 8 + 4.0 * double(exact);
  const double quant_b = double(entries) * (o.bits + o.index_bits) / 8 + double(books) + 4.0 * double(exact);
  const double file_b = double(rep.total_bytes);
  std::printf("size: dense fp32 %s B | pruned %s B | quantized to %d bits %s B | Huffman-coded %s B "
              "(%.1fx smaller than dense)\n",
              with_commas(size_t(dense_b)).c_str(), with_commas(size_t(pruned_b)).c_str(), o.bits,
              with_commas(size_t(quant_b)).c_str(), with_commas(size_t(file_b)).c_str(), dense_b / file_b);
  if (data) {
    std::printf("accuracy on %s:", data->test.name.c_str());
    for (size_t i = 0; i < stages.size(); ++i)
      std::printf("%s %s %.4f", i ? " |" : "", stages[i].name.c_str(), stages[i].acc);
    std::printf("\n");
  }
  std::printf("wrote %s\n", o.out.c_str());
  return 0;
}

}  // namespace sq
