// m3 bench: placeholder registration, filled in by the performance work.
#include "cli/commands.h"

namespace m3::cli {

void register_bench(CLI::App& app) { (void)app; }

}  // namespace m3::cli
