# written by bench/cost_model.py; run from this folder: gnuplot plots.gp
set terminal pngcairo size 900,560 enhanced font 'DejaVu Sans,10'
set grid; set key left top; set logscale x 2
set output 'measured_time.png'
set title 'Measured allreduce time (CPU, MPI processes on one host, shared memory)'
set xlabel 'bytes'; set ylabel 'time (µs), median, slowest rank'; set logscale y
set format x '2^{%L}'
plot 'measured_np2_raw.dat' u 1:2 w lp t 'p=2, raw', 'measured_np2_thread.dat' u 1:2 w lp t 'p=2, thread', 'fit_np2.dat' u 1:2 w l dt 2 lw 2 t 'fit, p=2', 'measured_np4_raw.dat' u 1:2 w lp t 'p=4, raw', 'measured_np4_thread.dat' u 1:2 w lp t 'p=4, thread', 'fit_np4.dat' u 1:2 w l dt 2 lw 2 t 'fit, p=4'
set output 'measured_busbw.png'
set title 'Measured bus bandwidth, algbw·2(p−1)/p (CPU, shared memory)'
set ylabel 'busbw (GB/s)'; unset logscale y
plot 'measured_np2_raw.dat' u 1:3 w lp t 'p=2, raw', 'measured_np2_thread.dat' u 1:3 w lp t 'p=2, thread', 'measured_np4_raw.dat' u 1:3 w lp t 'p=4, raw', 'measured_np4_thread.dat' u 1:3 w lp t 'p=4, thread'
set format x '%g'
set xlabel 'ranks p'; set logscale y; set key right bottom
set output 'projected_comm_squeezenet.png'
set title 'PROJECTION: ring allreduce of SqueezeNet 1.0 gradients (4.8 MiB) per step'
set ylabel 'time per step (ms)'
plot 'comm_squeezenet.dat' u 1:2 w lp t 'NVLink ring', 'comm_squeezenet.dat' u 1:3 w lp t 'InfiniBand NDR (1 NIC)', 'comm_squeezenet.dat' u 1:4 w lp t '100 GbE', 'comm_squeezenet.dat' u 1:5 w lp t '25 GbE', 'comm_squeezenet.dat' u 1:6 w lp t '10 GbE'
set output 'projected_comm_alexnet.png'
set title 'PROJECTION: ring allreduce of AlexNet gradients (233.1 MiB) per step'
set ylabel 'time per step (ms)'
plot 'comm_alexnet.dat' u 1:2 w lp t 'NVLink ring', 'comm_alexnet.dat' u 1:3 w lp t 'InfiniBand NDR (1 NIC)', 'comm_alexnet.dat' u 1:4 w lp t '100 GbE', 'comm_alexnet.dat' u 1:5 w lp t '25 GbE', 'comm_alexnet.dat' u 1:6 w lp t '10 GbE'
unset logscale y; set yrange [0:100]; set key left bottom
set output 'projected_efficiency_0.png'
set title "PROJECTION: best scaling efficiency, no overlap\nsqueezenet1.0 224^2, local batch 4, CPU (1 core/rank), measured, T_{compute} = 383.5 ms"
set ylabel 'efficiency (%)'
plot 'eff_0.dat' u 1:2 w lp t 'NVLink ring', 'eff_0.dat' u 1:3 w lp t 'InfiniBand NDR (1 NIC)', 'eff_0.dat' u 1:4 w lp t '100 GbE', 'eff_0.dat' u 1:5 w lp t '25 GbE', 'eff_0.dat' u 1:6 w lp t '10 GbE'
set output 'projected_efficiency_1.png'
set title "PROJECTION: best scaling efficiency, no overlap\nsame step, AlexNet-sized gradient (as bench\\_ddp), measured, T_{compute} = 383.5 ms"
set ylabel 'efficiency (%)'
plot 'eff_1.dat' u 1:2 w lp t 'NVLink ring', 'eff_1.dat' u 1:3 w lp t 'InfiniBand NDR (1 NIC)', 'eff_1.dat' u 1:4 w lp t '100 GbE', 'eff_1.dat' u 1:5 w lp t '25 GbE', 'eff_1.dat' u 1:6 w lp t '10 GbE'
set output 'projected_efficiency_2.png'
set title "PROJECTION: best scaling efficiency, no overlap\nsqueezenet1.0 Fashion-MNIST, local batch 64, CPU, measured, T_{compute} = 400.6 ms"
set ylabel 'efficiency (%)'
plot 'eff_2.dat' u 1:2 w lp t 'NVLink ring', 'eff_2.dat' u 1:3 w lp t 'InfiniBand NDR (1 NIC)', 'eff_2.dat' u 1:4 w lp t '100 GbE', 'eff_2.dat' u 1:5 w lp t '25 GbE', 'eff_2.dat' u 1:6 w lp t '10 GbE'
set output 'projected_efficiency_3.png'
set title "PROJECTION: best scaling efficiency, no overlap\nH200 step batch 128, own kernels TF32 (measured, run c), SqueezeNet 1.0 gradient, T_{compute} = 27 ms"
set ylabel 'efficiency (%)'
plot 'eff_3.dat' u 1:2 w lp t 'NVLink ring', 'eff_3.dat' u 1:3 w lp t 'InfiniBand NDR (1 NIC)', 'eff_3.dat' u 1:4 w lp t '100 GbE', 'eff_3.dat' u 1:5 w lp t '25 GbE', 'eff_3.dat' u 1:6 w lp t '10 GbE'
set output 'projected_efficiency_4.png'
set title "PROJECTION: best scaling efficiency, no overlap\nH200 step batch 128, own kernels TF32 (measured, run c), AlexNet gradient, T_{compute} = 27 ms"
set ylabel 'efficiency (%)'
plot 'eff_4.dat' u 1:2 w lp t 'NVLink ring', 'eff_4.dat' u 1:3 w lp t 'InfiniBand NDR (1 NIC)', 'eff_4.dat' u 1:4 w lp t '100 GbE', 'eff_4.dat' u 1:5 w lp t '25 GbE', 'eff_4.dat' u 1:6 w lp t '10 GbE'
set output 'projected_efficiency_5.png'
set title "PROJECTION: best scaling efficiency, no overlap\nH200 step batch 128, PyTorch eager TF32 (measured, run c), SqueezeNet 1.0 gradient, T_{compute} = 20.3 ms"
set ylabel 'efficiency (%)'
plot 'eff_5.dat' u 1:2 w lp t 'NVLink ring', 'eff_5.dat' u 1:3 w lp t 'InfiniBand NDR (1 NIC)', 'eff_5.dat' u 1:4 w lp t '100 GbE', 'eff_5.dat' u 1:5 w lp t '25 GbE', 'eff_5.dat' u 1:6 w lp t '10 GbE'
set output 'projected_efficiency_6.png'
set title "PROJECTION: best scaling efficiency, no overlap\nH200 step batch 128, PyTorch eager TF32 (measured, run c), AlexNet gradient, T_{compute} = 20.3 ms"
set ylabel 'efficiency (%)'
plot 'eff_6.dat' u 1:2 w lp t 'NVLink ring', 'eff_6.dat' u 1:3 w lp t 'InfiniBand NDR (1 NIC)', 'eff_6.dat' u 1:4 w lp t '100 GbE', 'eff_6.dat' u 1:5 w lp t '25 GbE', 'eff_6.dat' u 1:6 w lp t '10 GbE'
