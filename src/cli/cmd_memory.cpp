// Being written: the subcommands register nothing yet.
#include "cli/commands.h"
namespace m3::cli {
void register_memorize(CLI::App&) {}
void register_bank(CLI::App&) {}
void register_search(CLI::App&) {}
}  // namespace m3::cli
