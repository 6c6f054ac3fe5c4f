// Timing helpers shared by the benchmarks (bench/bench_*.cpp): Clock, seconds_since and median
// live in the m3_bench library (m3/bench.h) with the measurements `m3 bench` shares with them.
#pragma once

#include "m3/bench.h"
