// Being written: the subcommands register nothing yet.
#include "cli/commands.h"
namespace m3::cli {
void register_plot(CLI::App&) {}
}  // namespace m3::cli
