// `freshet compact` and `freshet vacuum`: upkeep of the offline store's Delta tables. Compact rewrites small
// files into large ones (a dataChange:false commit); vacuum deletes the files that commits removed once they
// are older than offline.retention. Both take each table's writer lock, so they refuse to run while a
// `freshet run` writes the same table (it can compact by itself: offline.compact_every).
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "cli/commands.h"
#include "offline/offline_table.h"
#include "offline/tables.h"
#include "spec/spec.h"

namespace freshet::cli {
namespace {

struct TableArgs {
  std::string spec;
  std::string data_dir = "freshet-data";
  std::string table;
};

void AddTableOptions(CLI::App* cmd, TableArgs* args) {
  cmd->add_option("--spec", args->spec, "Feature spec (YAML)")->required();
  cmd->add_option("--data-dir", args->data_dir,
                  "The data folder of `freshet run`, holding offline/ (unless the spec sets offline.path)")
      ->capture_default_str();
  cmd->add_option("--table", args->table, "Only this table: events, features or feature_log (default: every one)")
      ->check(CLI::IsMember({"events", "features", "feature_log"}));
}

// What compact and vacuum work on: the spec, its offline paths, and the tables as (name, folder): the one asked
// for, or every one that exists.
struct Upkeep {
  Spec spec;
  OfflinePaths paths;
  std::vector<std::pair<std::string, std::string>> tables;
};

std::optional<Upkeep> OpenUpkeep(const char* command, const TableArgs& args, int* exit_code) {
  std::optional<Spec> spec = LoadSpecOrReport(args.spec, exit_code);
  if (!spec) return std::nullopt;
  const OfflinePaths paths = OfflinePathsFor(*spec, args.data_dir);
  std::vector<std::pair<std::string, std::string>> tables;
  for (const auto& [name, dir] : {std::pair{"events", paths.events}, std::pair{"features", paths.features},
                                  std::pair{"feature_log", paths.feature_log}}) {
    if (!args.table.empty() && args.table != name) continue;
    if (!std::filesystem::exists(std::filesystem::path(dir) / "_delta_log")) {
      if (!args.table.empty()) {
        std::fprintf(stderr, "freshet %s: there is no %s table at '%s'; check --data-dir and the spec's offline.path\n",
                     command, name, dir.c_str());
        *exit_code = 2;
        return std::nullopt;
      }
      continue;
    }
    tables.emplace_back(name, dir);
  }
  if (tables.empty()) {
    std::fprintf(stderr, "freshet %s: no offline tables under '%s'; check --data-dir and the spec's offline.path\n",
                 command, paths.root.c_str());
    *exit_code = 2;
    return std::nullopt;
  }
  return Upkeep{std::move(*spec), paths, std::move(tables)};
}

}  // namespace

void RegisterCompact(CLI::App& app, int* exit_code) {
  auto args = std::make_shared<TableArgs>();
  CLI::App* cmd = app.add_subcommand(
      "compact",
      "Rewrite each offline table's small files (under 32 MiB) into larger ones, per partition and in seq order, "
      "in one dataChange:false commit per table. The old files stay for time travel until `freshet vacuum`. "
      "Refused while a `freshet run` writes the table (set offline.compact_every to compact inside the run)");
  AddTableOptions(cmd, args.get());
  cmd->callback([args, exit_code] {
    std::optional<Upkeep> upkeep = OpenUpkeep("compact", *args, exit_code);
    if (!upkeep) return;
    for (const auto& [name, dir] : upkeep->tables) {
      CompactionOptions options;
      options.staging_dir = upkeep->paths.Staging(name);
      options.app_id = "freshet-" + name;
      options.retention_ms = upkeep->spec.offline.retention_ms;
      Result<CompactionResult> result = CompactTable(dir, options);
      if (ReportFailure("compact", result.status(), exit_code)) return;
      if (result->version < 0) {
        std::fprintf(stderr, "compact: %s: nothing to compact\n", name.c_str());
      } else {
        std::fprintf(stderr, "compact: %s: %zu files (%llu rows) rewritten into %zu, version %lld\n", name.c_str(),
                     result->files_removed, static_cast<unsigned long long>(result->rows), result->files_added,
                     static_cast<long long>(result->version));
      }
    }
  });
}

void RegisterVacuum(CLI::App& app, int* exit_code) {
  struct Args : TableArgs {
    bool dry_run = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "vacuum",
      "Delete the files of the offline tables that commits removed (compaction, backfill, recovery) more than "
      "offline.retention (default 7d) ago; time travel to versions that need them stops working. Prints each "
      "deleted file's path on stdout. Refused while a `freshet run` writes the table");
  AddTableOptions(cmd, args.get());
  cmd->add_flag("--dry-run", args->dry_run, "Print the files that would be deleted, and delete nothing");
  cmd->callback([args, exit_code] {
    std::optional<Upkeep> upkeep = OpenUpkeep("vacuum", *args, exit_code);
    if (!upkeep) return;
    for (const auto& [name, dir] : upkeep->tables) {
      Result<VacuumResult> result = VacuumTable(dir, upkeep->spec.offline.retention_ms, args->dry_run);
      if (ReportFailure("vacuum", result.status(), exit_code)) return;
      for (const std::string& path : result->deleted) std::printf("%s/%s\n", dir.c_str(), path.c_str());
      std::fprintf(stderr, "vacuum: %s: %s %zu files (%llu bytes); %zu removed files kept within the retention\n",
                   name.c_str(), args->dry_run ? "would delete" : "deleted", result->deleted.size(),
                   static_cast<unsigned long long>(result->deleted_bytes), result->kept);
    }
  });
}

}  // namespace freshet::cli
