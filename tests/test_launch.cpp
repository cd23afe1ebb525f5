// Whole-job failure handling under mpiexec: a rank that throws, is killed, sees a NaN loss or
// drifts from the others makes every rank exit, non-zero, within seconds, with a message naming
// the rank, host and cause. Runs the real CLI through mpiexec (skipped in a build without MPI).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

namespace {

const char* kFashion = "/usr/share/datasets/fashion-mnist";

bool have_fashion() {
  struct stat st;
  return ::stat((std::string(kFashion) + "/train-images-idx3-ubyte.gz").c_str(), &st) == 0;
}

struct JobResult {
  int status = -1;  // exit status of mpiexec (-1: killed by a signal or by the watchdog)
  double seconds = 0;
  std::string err;
};

// A training job long enough (50 epochs) that only a prompt whole-job exit ends it in seconds;
// `timeout` turns a hang into a failure instead of a stuck test.
JobResult run_job(int np, const std::string& extra, const std::string& tag) {
#ifndef SQUEEZE_MPIEXEC
  (void)np, (void)extra, (void)tag;
  return {};
#else
  const std::string dir = ::testing::TempDir() + "squeeze_launch_" + tag + "_" + std::to_string(::getpid());
  const std::string errfile = dir + ".err";
  // Open MPI refuses root (CI runs as root) and more ranks than cores unless told; one thread
  // per rank.
  const std::string cmd =
      "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
      "OMPI_MCA_rmaps_base_oversubscribe=1 OMP_NUM_THREADS=1 timeout -s KILL 120 " + std::string(SQUEEZE_MPIEXEC) + " -n " + std::to_string(np) + " " +
      SQUEEZE_BINARY + " train --base-e 16 --incr-e 16 --epochs 50 --train-limit 320" +
      " --test-limit 32 --out " + dir + " " + extra + " > /dev/null 2> " + errfile;
  const auto t0 = std::chrono::steady_clock::now();
  const int st = std::system(cmd.c_str());
  JobResult r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  std::ifstream f(errfile);
  r.err.assign(std::istreambuf_iterator<char>(f), {});
  // No rank outlives the job. ("[-]-out" matches "--out" but not the pgrep command's own line.)
  const std::string pattern = "'[-]-out " + dir + " '";
  const int left = std::system(("pgrep -f -- " + pattern + " > /dev/null").c_str());
  EXPECT_NE(WEXITSTATUS(left), 0) << "processes of the job are still running";
  std::system(("pkill -KILL -f -- " + pattern + "; rm -rf '" + dir + "' '" + errfile + "'").c_str());
  return r;
#endif
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

class Launch : public ::testing::Test {
 protected:
  void SetUp() override {
#ifndef SQUEEZE_MPIEXEC
    GTEST_SKIP() << "built without MPI: no mpiexec to test under";
#endif
    if (!have_fashion()) GTEST_SKIP() << "Fashion-MNIST not installed at " << kFashion;
  }
};

}  // namespace

TEST_F(Launch, ARankThatThrowsEndsTheWholeJob) {
  const JobResult r = run_job(2, "--batch-size 32 --inject-fault 1:2:throw", "throw");
  std::printf("job ended after %.1f s, status %d\n", r.seconds, r.status);
  EXPECT_NE(r.status, 0);
  EXPECT_LT(r.seconds, 30.0) << "the other rank should not wait on its collective";
  EXPECT_TRUE(contains(r.err, "squeeze: error on rank 1 of 2 (host ")) << r.err;
  EXPECT_TRUE(contains(r.err, "injected fault at step 2")) << r.err;
}

TEST_F(Launch, AKilledRankEndsTheWholeJob) {
  const JobResult r = run_job(2, "--batch-size 32 --inject-fault 0:3:kill", "kill");
  std::printf("job ended after %.1f s, status %d\n", r.seconds, r.status);
  EXPECT_NE(r.status, 0);
  EXPECT_LT(r.seconds, 30.0);
  EXPECT_TRUE(contains(r.err, "signal 9")) << "mpiexec should report the killed rank: " << r.err;
}

TEST_F(Launch, ANanLossOnOneRankStopsEveryRank) {
  const JobResult r = run_job(2, "--batch-size 32 --inject-fault 1:1:nan", "nan");
  EXPECT_NE(r.status, 0);
  EXPECT_LT(r.seconds, 30.0);
  EXPECT_TRUE(contains(r.err, "training diverged: loss is nan at step 1")) << r.err;
}

TEST_F(Launch, DriftedReplicasAreAClearError) {
  const JobResult r = run_job(2, "--batch-size 32 --inject-fault 1:2:desync --check-replicas 1", "desync");
  EXPECT_NE(r.status, 0);
  EXPECT_LT(r.seconds, 30.0);
  EXPECT_TRUE(contains(r.err, "replicas disagree after step 3: parameter checksum of rank 1"))
      << r.err;
}

TEST_F(Launch, AGlobalBatchNotDivisibleByTheRanksIsRefusedAtStart) {
  const JobResult r = run_job(2, "--batch-size 33", "divisible");
  EXPECT_NE(r.status, 0);
  EXPECT_TRUE(contains(r.err, "--batch-size 33 is not divisible by the world size 2")) << r.err;
}
