#!/usr/bin/env bash
# The GPU path on the lent GPU machine, from the repository root, after scripts/gpu_deps.sh ran
# here and with `.device` carried:
#
#   bash scripts/gpu_check.sh [PHASE...]        (device run; phases in the order given)
#
# Phases (default: test nccl collectives bench pytorch):
#   test     every GPU test (test_cuda_ops), --check-layers on three configurations, one epoch
#            `squeeze train --device cuda` (the default job: 3 epochs of Fashion-MNIST), one BF16
#            epoch; the tensor-core tests through the WMMA kernel (SQUEEZE_IGEMM_MMA=0), and
#            without the window kernel (SQUEEZE_IGEMM_WIN=0); the fp32 convolution, Fire and model
#            tests and --check-layers through three TF32 products (SQUEEZE_IGEMM_3XTF32=1). When
#            test_cuda_ops fails: every test that did not pass again alone, then under each of
#            SQUEEZE_IGEMM_WIN=0, PERSIST=0 and MMA=0, to name the kernel family at fault
#            (`isolate`); `bench` then times with the switch that passed
#   older    the older GPUs' routes on this one: test_cuda_ops and --check-layers (fp32, TF32, BF16;
#            squeezenet1.0 and 1.1) with the shared memory a block capped at sm_86/89's 99 KB and
#            at sm_80's 163 KB (SQUEEZE_SMEM_OPTIN, which also turns wgmma off); then the same
#            tests and one training epoch on compute_80's code (.device/bin/sm80: PTX the driver
#            compiles for this GPU on first use, the code older GPUs get: no wgmma), at the GPU's
#            own limit and at 99 KB
#   nccl     the NCCL test of test_mpi at 1 rank (and at 2 ranks on the one GPU, which NCCL
#            refuses before 2.30), `mpirun -np 1 squeeze train --device cuda` over NCCL; two GPU
#            ranks on the one GPU over MPI through pinned host memory (test_mpi's test and one
#            epoch of squeeze train)
#   collectives  bench_collectives at 1 rank (MPI and NCCL methods)
#   ddp      bench_ddp_gpu: the training step with its gradient reducer against the step alone,
#            squeezenet1.0 at 1 rank over NCCL (the path's cost without a link), and the
#            Fashion-MNIST configuration at 2 ranks on the one GPU over MPI through pinned memory
#   bench    bench_gpu: Fire shapes own vs cuDNN at fp32/TF32/BF16, training images/s, per-layer
#            step profiles of squeezenet1.0 and the Fashion-MNIST configuration; then the
#            training section again with SQUEEZE_CUDA_GRAPH=0 (the step launched kernel by kernel,
#            not replayed as a CUDA graph), and the
#            convolutions and training with SQUEEZE_IGEMM_PERSIST=0 (one block a tile), and with
#            SQUEEZE_IGEMM_WIN=0 (the expand 3x3 products through the mma kernel's gathers), the
#            convolutions and layers with SQUEEZE_IGEMM_DENSE=0 (the 1x1 products' copies through
#            keys, no 128x128 tile), the convolutions, training and layers at TF32 and BF16 with
#            SQUEEZE_IGEMM_WGMMA=0 (every product's wgmma kernel off: the 1x1 and 3x3 products
#            and conv1's forward on the mma, window and row kernels' mma.sync), the
#            step's layers with SQUEEZE_POOL_BAND=0 (the max-pools' gathering kernels), and
#            the fp32 columns with SQUEEZE_IGEMM_3XTF32=1 (three TF32 products a multiply); the
#            algorithms cuDNN picked for each geometry ($OUT/cudnn_algos.txt), and the own
#            kernel, tile and grid each product ran on ($OUT/igemm_routes.txt); then every
#            prediction since run c scored against these runs ($OUT/predictions.md). The
#            opt-in kernel variants run the same way by their switches (SQUEEZE_IGEMM_MMA=0,
#            SQUEEZE_IGEMM_WIDE=1, SQUEEZE_IGEMM_WARPS=4x8, SQUEEZE_IGEMM_PREFETCH=0)
#   profile  Nsight Compute (ncu): every kernel of one training step of squeezenet1.0 and of the
#            Fashion-MNIST configuration (fp32 and TF32), its time; bench/ncu_summary.py
#            tabulates them ($OUT/ncu.tar.gz)
#   limits   Nsight Compute's bottleneck sections (issue slots, pipes, stall reasons, shared-memory
#            wavefronts and bank conflicts, cache and DRAM throughput) over the convolution kernels
#            of one squeezenet1.0 TF32 step, in two runs (the forwards; the backwards), and over
#            the step's other kernels (pools, dropout, loss, SGD) in a third, kernel replay;
#            bench/ncu_summary.py --limits tabulates them ($OUT/ncu_limits.tar.gz)
#   pytorch  bench/pytorch_gpu.py: PyTorch eager and torch.compile on the same GPU, and eager
#            under BF16 autocast (the same arithmetic as --precision bf16)
#   sanitize compute-sanitizer memcheck over small GPU training steps (every kernel of a model)
#            and the compression constraints' kernels and max-pools; memcheck and racecheck of the
#            mma kernel; racecheck of the band max-pools
#   compress `squeeze compress --device cuda` of the default job's weights (trained first when the
#            test phase did not run): 6 bits, one epoch of retraining after each stage (its time:
#            the elapsed stamps of this and the next header);
#            then the same under `mpirun -np 1` (NCCL)
# Uses the binaries carried in .device/bin.tar.xz when they run here, else builds (a minute or two; without
# MPI, so the nccl phase then fails). Each phase
# has a time limit (PHASE_LIMIT_S, default 150 s) so that a hang costs one phase, not the lease.
# Everything printed also goes to $OUT/gpu_check.log; the other results (JSON, route and algorithm
# lists, profiles) into $OUT/results_<phases>.tgz when the script ends.
set -uo pipefail
cd "$(dirname "$0")/.."
phases=${*:-test nccl collectives bench pytorch}
OUT=${OUT:-/tmp/sq_gpu_out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
limit=${PHASE_LIMIT_S:-150}
# The device tool returns at most 8 files from $OUT: on the way out (a timeout's TERM too), this
# run's results other than the log and the predictions go into one archive,
# $OUT/results_<phases>.tgz (a later run in the same call makes its own).
packed=0
pack() {
  [ $packed = 1 ] && return; packed=1
  local tgz files
  tgz=results_$(echo $phases | tr ' ' '_').tgz
  files=$(cd "$OUT" && ls | grep -vx -e gpu_check.log -e predictions.md -e 'results_.*\.tgz')
  [ -n "$files" ] && (cd "$OUT" && tar -czf "$tgz" $files && rm -f $files)
}
trap pack EXIT
trap 'pack; exit 143' TERM INT
t0=$(date +%s)
elapsed() { echo "$(( $(date +%s) - t0 )) s"; }

# --- the carried Debian packages, relocated ----------------------------------------------------
DEPS=/tmp/sqdeps
if [ ! -d "$DEPS/usr" ]; then
  mkdir -p "$DEPS"
  for f in .device/debs/*.deb; do dpkg -x "$f" "$DEPS"; done
fi
lib=$DEPS/usr/lib/x86_64-linux-gnu
nv=$(python3 -c "import nvidia, os; print(list(nvidia.__path__)[0])" 2>/dev/null || true)
nvlibs=$(ls -d "$nv"/*/lib 2>/dev/null | tr '\n' ':')
export LD_LIBRARY_PATH="$lib/openblas-openmp:$lib:$lib/openmpi/lib:$nvlibs${LD_LIBRARY_PATH:-}"
export OPAL_PREFIX=$DEPS/usr PATH=$DEPS/usr/bin:$PATH
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_mca_base_component_show_load_errors=0 PMIX_MCA_pcompress_base_silence_warning=1 OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader
export SQUEEZE_FASHION_MNIST=$DEPS/usr/share/datasets/fashion-mnist
data=$SQUEEZE_FASHION_MNIST
date -u
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
nvcc --version | tail -1
lscpu | grep -E "^Model name|^CPU\(s\)"
python3 -c "import torch; print('torch', torch.__version__, 'cuDNN', torch.backends.cudnn.version(), 'NCCL', torch.cuda.nccl.version())" 2>&1

# --- binaries: carried, else built here ----------------------------------------------------------
[ -f .device/bin.tar.xz ] && { rm -rf .device/bin; tar -C .device -xJf .device/bin.tar.xz; }
B=.device/bin
if ! { [ -x $B/squeeze ] && $B/squeeze --help > /dev/null 2>&1 && ! ldd $B/test_cuda_ops $B/test_mpi | grep -q "not found"; }; then
  echo "carried binaries do not run here ($(ldd $B/squeeze 2>&1 | grep 'not found' | head -3 | tr '\n' ' ')); building"
  cudnn_root=$(python3 -c "import nvidia.cudnn as c; print(list(c.__path__)[0])" 2>/dev/null || true)
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
  [ "$cap" = 90 ] && cap=90a  # (sm_90's wgmma code: kernels/cuda/wgmma.cuh)
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$DEPS/usr" \
    -DSQUEEZE_WITH_MPI=OFF ${cudnn_root:+-DCUDNN_ROOT=$cudnn_root} \
    -DCMAKE_CUDA_ARCHITECTURES="${cap:-90}" > /tmp/configure.log 2>&1 || { tail -30 /tmp/configure.log; exit 1; }
  grep -E "CUDA kernels" /tmp/configure.log  # (no MPI headers carried: the nccl phase fails)
  cmake --build build-gpu -j"$(nproc)" --target squeeze test_cuda_ops test_train bench_gpu \
    > /tmp/build.log 2>&1 || { grep -E "error" -A3 /tmp/build.log | head -60; exit 1; }
  B=build-gpu
fi
echo "binaries: $B ($(cat $B/COMMIT 2>/dev/null | tr '\n' ' ')), ready after $(elapsed)"
status=0
run() {  # run LABEL CMD...: time-limited, its result in the summary
  echo; echo "## $1 ($(elapsed))"; local label=$1; shift
  timeout -k 5 "$limit" "$@"; local rc=$?
  [ $rc = 0 ] || { status=1; echo "!! $label: exit $rc"; }
  summary+=("$label: $([ $rc = 0 ] && echo ok || echo "FAILED ($rc)")")
  return $rc
}
summary=()

# After a failed gtest run: each test that did not pass, again in its own process (a kernel fault
# leaves the CUDA context unusable, so every test after it failed too), then each one still
# failing under each switch that routes around what changed since run c (kernels, the graph). The switch under which
# every one passes names the faulty kernel family, and `bench` then times with it rather than
# losing its phase. (fp32's changes since run c have no switch: if none helps, look there.)
switches="SQUEEZE_IGEMM_WGMMA=0 SQUEEZE_IGEMM_DENSE=0 SQUEEZE_IGEMM_WIN=0 SQUEEZE_IGEMM_PERSIST=0 SQUEEZE_IGEMM_MMA=0 SQUEEZE_POOL_BAND=0 SQUEEZE_CUDA_GRAPH=0"
fallback=""
isolate() {  # isolate LOG BIN: LOG holds the failed run's output
  local log=$1 bin=$2 t sw failing=() still=()
  for t in $("$bin" --gtest_list_tests | awk '/^[^ ]/ {s=$1} /^  / {print s $1}'); do
    grep -qF "[       OK ] $t (" "$log" || grep -qF "[  SKIPPED ] $t (" "$log" || failing+=("$t")
  done
  echo "isolate: ${#failing[@]} test(s) did not pass: ${failing[*]}"
  for t in "${failing[@]}"; do
    run "alone: $t" "$bin" --gtest_color=no --gtest_brief=1 --gtest_filter="$t" || still+=("$t")
  done
  [ ${#still[@]} = 0 ] && { echo "isolate: every one passes alone (a fault in an earlier test?)"; return; }
  for sw in $switches; do
    local all=1
    for t in "${still[@]}"; do
      env "$sw" timeout -k 5 "$limit" "$bin" --gtest_color=no --gtest_brief=1 --gtest_filter="$t" \
        > /tmp/isolate.log 2>&1 || { all=0; tail -3 /tmp/isolate.log; }
    done
    summary+=("with $sw: ${#still[@]} failing test(s) $([ $all = 1 ] && echo pass || echo "still fail")")
    echo "isolate: with $sw the failing tests $([ $all = 1 ] && echo pass || echo "still fail")"
    [ $all = 1 ] && [ -z "$fallback" ] && fallback=$sw
  done
}

for phase in $phases; do
  case $phase in
  test)
    run test_cuda_ops bash -o pipefail -c "$B/test_cuda_ops --gtest_color=no | tee /tmp/test_cuda_ops.log" ||
      isolate /tmp/test_cuda_ops.log $B/test_cuda_ops
    for args in "--model squeezenet1.0" "--model squeezenet1.1" "--model squeezenet1.0 --bypass complex"; do
      run "check-layers $args" $B/squeeze train --device cuda --check-layers $args --batch-size 32 --data-dir "$data"
    done
    for prec in tf32 bf16; do
      run "check-layers --precision $prec" $B/squeeze train --device cuda --check-layers \
        --precision $prec --model squeezenet1.0 --batch-size 32 --data-dir "$data"
    done
    run "train --device cuda (the default job)" $B/squeeze train --device cuda --data-dir "$data" \
      --out /tmp/sq_gpu_run --overwrite
    run "train --device cuda --precision bf16 (1 epoch)" \
      $B/squeeze train --device cuda --precision bf16 --epochs 1 --data-dir "$data" --out /tmp/sq_gpu_bf16 --overwrite
    SQUEEZE_TEST_TRAIN_DEVICE=cuda SQUEEZE_BINARY=$PWD/$B/squeeze \
      run "SIGTERM stops GPU training after the step, with a checkpoint" \
      $B/test_train --gtest_color=no --gtest_filter='Cli.SigtermStopsTrainingWithACheckpoint'
    # The opt-in WMMA tensor-core kernel (the default is v7's mma.sync): every model shape against
    # the double reference, and the graph test's TF32 steps.
    SQUEEZE_IGEMM_MMA=0 run "test_cuda_ops, WMMA kernel (tensor-core tests)" $B/test_cuda_ops \
      --gtest_color=no --gtest_filter='CudaOps.TensorCoreConvolution*:CudaStep.*'
    # The 3x3 stride-1 products through the mma kernel's gathers (the default is the window
    # kernel): every model shape against the double reference.
    SQUEEZE_IGEMM_WIN=0 run "test_cuda_ops, 3x3 products without the window kernel" $B/test_cuda_ops \
      --gtest_color=no --gtest_filter='CudaOps.TensorCoreConvolution*'
    # Every product through its mma.sync kernel (the default on sm_90a is wgmma: the 1x1 and 3x3
    # products, conv1's forward): every model shape against the double reference.
    SQUEEZE_IGEMM_WGMMA=0 run "test_cuda_ops, 1x1 products without wgmma" $B/test_cuda_ops \
      --gtest_color=no --gtest_filter='CudaOps.TensorCoreConvolution*'
    # The max-pools' gathering kernels (the default is the band kernels): every model shape, bit
    # for bit against the CPU.
    SQUEEZE_POOL_BAND=0 run "test_cuda_ops, max-pools without the band kernels" $B/test_cuda_ops \
      --gtest_color=no --gtest_filter='CudaOps.MaxPool*'
    # fp32 through three TF32 products (opt-in): every model shape at the fp32 tolerance, the Fire
    # modules, the model against the CPU layer by layer and over training steps.
    SQUEEZE_IGEMM_3XTF32=1 run "test_cuda_ops, fp32 through 3xTF32" $B/test_cuda_ops --gtest_color=no \
      --gtest_filter='CudaOps.Convolution:CudaOps.FireModule:CudaModel.*'
    SQUEEZE_IGEMM_3XTF32=1 run "check-layers, fp32 through 3xTF32" $B/squeeze train --device cuda \
      --check-layers --model squeezenet1.0 --batch-size 32 --data-dir "$data"
    # v8: the fp32 8x8-share tiles on cp.async stages (opt-in, since session 22): every model
    # shape at the fp32 tolerance, the Fire modules, the model against the CPU, and --check-layers.
    SQUEEZE_IGEMM_ASYNC=1 run "test_cuda_ops, fp32 through v8's async tiles" $B/test_cuda_ops --gtest_color=no \
      --gtest_filter='CudaOps.Convolution:CudaOps.FireModule:CudaModel.*'
    SQUEEZE_IGEMM_ASYNC=1 run "check-layers, fp32 through v8's async tiles" $B/squeeze train --device cuda \
      --check-layers --model squeezenet1.0 --batch-size 32 --data-dir "$data"
    ;;
  older)
    # Each cap: every GPU test (the route test expects that limit's kernels), and each precision
    # and model layer by layer against the CPU.
    older_checks() {  # older_checks BIN_DIR LABEL
      run "test_cuda_ops, $2" $1/test_cuda_ops --gtest_color=no
      for m in squeezenet1.0 squeezenet1.1; do
        for prec in fp32 tf32 bf16; do
          run "check-layers --model $m --precision $prec, $2" $1/squeeze train --device cuda --check-layers \
            --model $m --precision $prec --batch-size 32 --data-dir "$data"
        done
      done
    }
    for cap in 101376 166912; do
      SQUEEZE_SMEM_OPTIN=$cap older_checks $B "sm_90a's code, $cap bytes a block"
    done
    if [ -x .device/bin/sm80/test_cuda_ops ]; then
      # The driver's compilation of compute_80's PTX is cached (CUDA_CACHE_PATH) after the first
      # process that loads it: the first test's time holds it.
      export CUDA_CACHE_PATH=/tmp/sq_jit_cache CUDA_CACHE_MAXSIZE=4294967296
      run "no wgmma in compute_80's code (the probe skips)" bash -o pipefail -c ".device/bin/sm80/test_cuda_ops \
        --gtest_color=no --gtest_filter=CudaOps.WgmmaProbeGivesTheProduct | grep 'no wgmma in this build'"
      older_checks .device/bin/sm80 "compute_80's code"
      SQUEEZE_SMEM_OPTIN=101376 older_checks .device/bin/sm80 "compute_80's code, 101376 bytes a block"
      run "train --device cuda on compute_80's code (1 epoch, TF32)" .device/bin/sm80/squeeze train --device cuda \
        --precision tf32 --epochs 1 --data-dir "$data" --out /tmp/sq_gpu_sm80 --overwrite
    else
      status=1; echo "!! older: no .device/bin/sm80 (run scripts/gpu_deps.sh here)"
    fi
    ;;
  nccl)
    run "test_mpi Nccl, 1 rank" mpirun -np 1 $B/test_mpi --gtest_color=no --gtest_filter='Nccl.*:Mpi/*'
    NCCL_MULTI_RANK_GPU_ENABLE=1 run "test_mpi Nccl, 2 ranks on 1 GPU" \
      mpirun -np 2 -x NCCL_MULTI_RANK_GPU_ENABLE $B/test_mpi --gtest_color=no --gtest_filter='Nccl.*'
    run "mpirun -np 1 train --device cuda (NCCL)" mpirun -np 1 $B/squeeze train --device cuda \
      --epochs 1 --data-dir "$data" --out /tmp/sq_gpu_nccl --overwrite
    # Two ranks on the one GPU: NCCL refuses before 2.30, so MPI through pinned host memory.
    run "test_mpi GPU ranks over MPI, 2 ranks" mpirun -np 2 -x SQUEEZE_FASHION_MNIST $B/test_mpi \
      --gtest_color=no --gtest_filter='Train.GpuRanksWithoutNcclMatchOneCpuProcess'
    run "mpirun -np 2 train --device cuda (MPI through pinned host memory)" mpirun -np 2 \
      $B/squeeze train --device cuda --epochs 1 --data-dir "$data" --out /tmp/sq_gpu_mpi --overwrite
    ;;
  ddp)
    run "bench_ddp_gpu, squeezenet1.0, 1 rank (NCCL)" mpirun -np 1 $B/bench_ddp_gpu \
      --config squeezenet1.0 --json "$OUT/ddp_gpu_np1.json"
    run "bench_ddp_gpu, fmnist, 2 ranks on 1 GPU (MPI through pinned memory)" mpirun -np 2 \
      $B/bench_ddp_gpu --config fmnist --json "$OUT/ddp_gpu_np2.json"
    ;;
  collectives)
    run "bench_collectives, 1 rank (NCCL's call cost; no link at one rank)" mpirun -np 1 \
      $B/bench_collectives --max-bytes 268435456 --target-ms 20 --json "$OUT/collectives_np1.json"
    ;;
  bench)
    # (SQUEEZE_CUDNN_ALGOS=1: each cuDNN plan's algorithms on stderr, kept in the log: whether
    # cuDNN's fp32 3x3 times come from Winograd or FFT, fewer multiplies than a direct product.
    # SQUEEZE_IGEMM_ROUTES=FILE: which of the own kernels each product ran on, its tile and grid.)
    rm -f /tmp/igemm_routes.txt
    SQUEEZE_CUDNN_ALGOS=1 SQUEEZE_IGEMM_ROUTES=/tmp/igemm_routes.txt run bench_gpu $B/bench_gpu --reps 20 --json "$OUT/bench_gpu.json" || {
      # A fault in a kernel made since run c: time around it (the switch the test phase found,
      # else the window, row and persistent kernels and the dense copies all off), and say so above
      # the predictions.
      sw=${fallback:-"SQUEEZE_IGEMM_WIN=0 SQUEEZE_IGEMM_PERSIST=0 SQUEEZE_IGEMM_DENSE=0 SQUEEZE_IGEMM_WGMMA=0"}
      run "bench_gpu with $sw" env $sw SQUEEZE_IGEMM_ROUTES=/tmp/igemm_routes.txt $B/bench_gpu --reps 20 \
        --json "$OUT/bench_gpu.json" && echo "bench_gpu.json was measured with $sw" > "$OUT/bench_gpu.fallback"
    }
    grep "squeeze: cuDNN .* plan for" "$OUT/gpu_check.log" | sort -u > "$OUT/cudnn_algos.txt"
    # ... and the training step launched kernel by kernel rather than replayed as a CUDA graph
    # (the default since session 21), same run.
    SQUEEZE_CUDA_GRAPH=0 run "bench_gpu, without CUDA graphs (training)" \
      $B/bench_gpu --reps 20 --sections 2 --json "$OUT/bench_gpu_nograph.json" &&
      python3 bench/gpu_compare.py "$OUT/bench_gpu.json" "$OUT/bench_gpu_nograph.json" --columns '^own .*img/s'
    # ... and the batch copied as floats rather than bytes (prefetch(), the schedule of runs a-d;
    # since session 22 the trainer and bench_gpu copy the data set's bytes and normalise them on
    # the device), same run: TF32 training.
    run "bench_gpu, batches as floats (training)" \
      $B/bench_gpu --reps 20 --sections 2 --variants 'own tf32' --float-batches --json "$OUT/bench_gpu_floats.json" &&
      python3 bench/gpu_compare.py "$OUT/bench_gpu.json" "$OUT/bench_gpu_floats.json" --columns '^own tf32'
    # ... and the tensor-core kernel with one block a tile everywhere (the persistent blocks for
    # products of few k-steps off), same run: the convolutions and training.
    SQUEEZE_IGEMM_PERSIST=0 run "bench_gpu, one block a tile (convolutions, training)" \
      $B/bench_gpu --reps 20 --sections 1b,2 --variants 'own fp32,own tf32,own bf16' --json "$OUT/bench_gpu_nopersist.json" &&
      python3 bench/gpu_compare.py "$OUT/bench_gpu.json" "$OUT/bench_gpu_nopersist.json"
    # ... and the expand 3x3 products through the mma kernel's gathers instead of the window
    # kernel (igemm_win.cuh), same run.
    SQUEEZE_IGEMM_WIN=0 run "bench_gpu, 3x3 products without the window kernel (convolutions, training)" \
      $B/bench_gpu --reps 20 --sections 1b,2 --variants 'own fp32,own tf32,own bf16' --json "$OUT/bench_gpu_nowin.json" &&
      python3 bench/gpu_compare.py "$OUT/bench_gpu.json" "$OUT/bench_gpu_nowin.json"
    # ... and the dense 1x1 products' copies through keys and bounds, at most 128 x 64, instead
    # of through row pointers and the one-block 128 x 128 tile (conv10), same run: the
    # convolutions and the layers at TF32 and BF16.
    SQUEEZE_IGEMM_DENSE=0 run "bench_gpu, dense products through keys (convolutions, layers)" \
      $B/bench_gpu --reps 20 --sections 1b,3 --variants 'own tf32,own bf16' --json "$OUT/bench_gpu_nodense.json" &&
      python3 bench/gpu_compare.py "$OUT/bench_gpu.json" "$OUT/bench_gpu_nodense.json"
    # ... and every product through its mma.sync kernel instead of wgmma (the 1x1 and 3x3 products,
    # conv1's forward), same run: the convolutions, training and the layers at TF32 and BF16.
    SQUEEZE_IGEMM_WGMMA=0 run "bench_gpu, 1x1 products without wgmma (convolutions, training, layers)" \
      $B/bench_gpu --reps 20 --sections 1b,2,3 --variants 'own tf32,own bf16' --json "$OUT/bench_gpu_nowgmma.json" &&
      python3 bench/gpu_compare.py "$OUT/bench_gpu.json" "$OUT/bench_gpu_nowgmma.json"
    # ... and the max-pools through their gathering kernels instead of the band kernels (the
    # layers of the TF32 step), same run.
    SQUEEZE_POOL_BAND=0 run "bench_gpu, max-pools without the band kernels (layers)" \
      $B/bench_gpu --reps 20 --sections 3 --variants 'own tf32' --json "$OUT/bench_gpu_noband.json" &&
      python3 bench/gpu_compare.py "$OUT/bench_gpu.json" "$OUT/bench_gpu_noband.json" --columns '^own tf32'
    # ... and fp32 through three TF32 products (opt-in), against the fp32 kernel and cuDNN fp32.
    SQUEEZE_IGEMM_3XTF32=1 SQUEEZE_IGEMM_ROUTES=/tmp/igemm_routes.txt run "bench_gpu, fp32 through 3xTF32 (Fire modules, convolutions, training, layers)" \
      $B/bench_gpu --reps 20 --sections 1,1b,2,3 --variants 'own fp32,cuDNN fp32' \
      --json "$OUT/bench_gpu_3xtf32.json" &&
      python3 bench/gpu_compare.py "$OUT/bench_gpu.json" "$OUT/bench_gpu_3xtf32.json" --columns '^own fp32'
    # ... and fp32 through v8's 8x8-share tiles on cp.async stages (opt-in), against v4's tiles.
    SQUEEZE_IGEMM_ASYNC=1 SQUEEZE_IGEMM_ROUTES=/tmp/igemm_routes.txt run "bench_gpu, fp32 through v8's async tiles (Fire modules, convolutions, training)" \
      $B/bench_gpu --reps 20 --sections 1,1b,2 --variants 'own fp32' --json "$OUT/bench_gpu_async.json" &&
      python3 bench/gpu_compare.py "$OUT/bench_gpu.json" "$OUT/bench_gpu_async.json" --columns '^own fp32'
    # The own kernels' routes of both runs, one line a product, geometry, precision and kernel.
    sort -u /tmp/igemm_routes.txt > "$OUT/igemm_routes.txt" 2>/dev/null || true
    # Every prediction since run c (docs/KERNELS.md) against these runs: a Markdown table.
    cat "$OUT/bench_gpu.fallback" > "$OUT/predictions.md" 2>/dev/null
    run "predictions since run c" sh -c "python3 bench/predictions.py '$OUT' | tee -a '$OUT/predictions.md'"
    ;;
  profile)
    # One training step a configuration under Nsight Compute: each kernel's time, in launch order.
    # Application replay (the step is deterministic) with the one metric that needs no extra pass;
    # the counters (application replay, several passes of the whole program) timed out at 60 s on
    # every configuration in run d, and `limits` (kernel replay) now reads them for every kernel.
    ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    mkdir -p /tmp/sq_ncu
    for cfg in fmnist:tf32 fmnist:fp32 squeezenet1.0:tf32 squeezenet1.0:fp32; do
      csv=/tmp/sq_ncu/ncu_${cfg/:/_}.csv
      run "ncu, one training step of $cfg (kernel times)" sh -c "\"$ncu\" --profile-from-start off \
        --replay-mode application --clock-control none --cache-control none --csv \
        --print-units base --metrics gpu__time_duration.sum $B/bench_gpu --profile $cfg > $csv" ||
        tail -5 "$csv"
      python3 bench/ncu_summary.py "$csv"
    done
    tar -C /tmp -czf "$OUT/ncu.tar.gz" sq_ncu
    ;;
  limits)
    # What bounds each convolution kernel: the sections' raw counters, one row a kernel. Kernel
    # replay (each kernel re-run once a pass, its memory saved and restored), so only the igemm
    # kernels of the profiled step: 26 forwards, then 51 backward products (a weight gradient
    # each, an input gradient for all but conv1). Separate runs, so that a time limit costs one.
    ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    mkdir -p /tmp/sq_limits
    sections="--section SpeedOfLight --section SchedulerStats --section WarpStateStats"
    sections="$sections --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section Occupancy"
    # The third run: every other kernel of the step (pools, dropout, the average pool, split-K
    # sums, loss, SGD), at 2-5x their bytes' time in run d and never profiled. The fourth: the
    # fp32 step's forward convolutions (the SIMT tile kernel, at about 55 % of the fp32 rate on
    # the 3x3 products in run d, where fire8 trails cuDNN's Winograd), never profiled either.
    others='regex:pool|dropout|relu_backward|splitk|bias_|xent|sgd|add_kernel|scale_kernel|sum_'
    for part in "tf32:fwd:-k regex:igemm --launch-count 26" "tf32:bwd:-k regex:igemm --launch-skip 26 --launch-count 51" \
                "tf32:other:-k '$others'" "fp32:fwd:-k regex:igemm --launch-count 26"; do
      math=${part%%:*} rest=${part#*:}
      what=${rest%%:*}
      csv=/tmp/sq_limits/limits_s10_${math}_$what.csv
      run "ncu limits, squeezenet1.0 $math $what $([ $what = other ] && echo kernels || echo convolutions)" \
        sh -c "\"$ncu\" --profile-from-start off \
        --replay-mode kernel --clock-control none --cache-control none ${rest#*:} \
        $sections --csv --page raw --print-units base $B/bench_gpu --profile squeezenet1.0:$math > $csv" ||
        tail -5 "$csv"
      python3 bench/ncu_summary.py --limits $([ $what = other ] || echo --labels $what) "$csv"
    done
    tar -C /tmp -czf "$OUT/ncu_limits.tar.gz" sq_limits
    ;;
  pytorch)
    PYTHONUNBUFFERED=1 run pytorch_gpu python3 bench/pytorch_gpu.py --steps 20 \
      ${NO_COMPILE:+--no-compile} --json "$OUT/pytorch_gpu.json"
    ;;
  sanitize)
    run "compute-sanitizer memcheck (small model steps)" compute-sanitizer --tool memcheck \
      --error-exitcode 1 $B/test_cuda_ops --gtest_color=no \
      --gtest_filter='CudaModel.TrainingStepsFollowTheCpu:CudaStep.*:CudaOps.SoftmaxCrossEntropy:CudaCompress.*:CudaOps.MaxPool*'
    # The cp.async + mma.sync kernel (v7): its copies' bounds (every model shape), and its
    # one-barrier-a-step pipeline's shared-memory hazards (racecheck, which took over 125 s on one
    # small model's steps: one small convolution per tile).
    run "compute-sanitizer memcheck (mma kernel)" compute-sanitizer --tool memcheck \
      --error-exitcode 1 $B/test_cuda_ops --gtest_color=no --gtest_filter='CudaOps.TensorCoreConvolution'
    run "compute-sanitizer racecheck (mma kernel)" compute-sanitizer --tool racecheck \
      --error-exitcode 1 $B/test_cuda_ops --gtest_color=no \
      --gtest_filter='CudaOps.TensorCoreConvolutionEveryTileSmall'
    # The band max-pools' staging in shared memory (a barrier after the copies and after the
    # item), in each of their forms on small pools.
    run "compute-sanitizer racecheck (band max-pools)" compute-sanitizer --tool racecheck \
      --error-exitcode 1 $B/test_cuda_ops --gtest_color=no --gtest_filter='CudaOps.MaxPoolSmall*'
    ;;
  compress)
    [ -f /tmp/sq_gpu_run/weights.safetensors ] || run "train --device cuda (weights to compress)" \
      $B/squeeze train --device cuda --data-dir "$data" --out /tmp/sq_gpu_run --overwrite
    run "compress --device cuda (6 bits, 1+1 epochs)" $B/squeeze compress --device cuda --weights /tmp/sq_gpu_run/weights.safetensors \
      --out "$OUT/fmnist6_gpu.sqz" --bits 6 --dataset fashion-mnist --data-dir "$data" --retrain-epochs 1
    run "mpirun -np 1 compress --device cuda (NCCL)" mpirun -np 1 $B/squeeze compress --device cuda \
      --weights /tmp/sq_gpu_run/weights.safetensors --out /tmp/fmnist6_nccl.sqz --bits 6 \
      --dataset fashion-mnist --data-dir "$data" --retrain-epochs 1
    ;;
  *) echo "unknown phase $phase"; status=1 ;;
  esac
done
echo; echo "## summary after $(elapsed)"
printf '%s\n' "${summary[@]}"
echo "gpu_check $phases: $([ $status = 0 ] && echo PASSED || echo FAILED)"
exit $status
