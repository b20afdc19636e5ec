#include "run/data_dir_reset.h"

#include <ctime>
#include <filesystem>

#include "offline/tables.h"

namespace freshet {
namespace {

namespace fs = std::filesystem;

// "20260102T030405Z" for the UTC time `ms` (epoch milliseconds).
std::string CompactUtc(int64_t ms) {
  const std::time_t seconds = static_cast<std::time_t>(ms / 1000 - (ms % 1000 < 0 ? 1 : 0));
  std::tm utc{};
  ::gmtime_r(&seconds, &utc);
  char text[32];
  std::strftime(text, sizeof text, "%Y%m%dT%H%M%SZ", &utc);
  return text;
}

// `path` absolute with symlinks resolved as far as it exists, for comparing two names of one folder.
fs::path Canonical(const fs::path& path) {
  std::error_code ec;
  fs::path absolute = fs::absolute(path, ec);
  if (ec) return path.lexically_normal();
  fs::path canonical = fs::weakly_canonical(absolute, ec);
  return ec ? absolute.lexically_normal() : canonical;
}

bool ExistsNoFollow(const fs::path& path) {
  std::error_code ec;
  return fs::symlink_status(path, ec).type() != fs::file_type::not_found && !ec;
}

bool HasContent(const fs::path& folder) {
  std::error_code ec;
  return fs::is_directory(folder, ec) && !fs::is_empty(folder, ec) && !ec;
}

}  // namespace

Result<DataDirReset> MoveRunStateAside(const Spec& spec, const std::string& data_dir, int64_t now_ms) {
  const fs::path dir(data_dir);
  const std::string offline_root = OfflinePathsFor(spec, data_dir).root;
  const bool offline_is_default = Canonical(offline_root) == Canonical(dir / "offline");
  DataDirReset reset;
  if (spec.offline.enabled && !offline_is_default && HasContent(offline_root)) {
    return Status::Invalid(
        "--reset moves only what is in the data directory '" + data_dir + "', but this spec's offline store '" +
        spec.offline.path + "' (offline.path) is outside it and has content, which a run without a checkpoint would "
        "roll back (removing the rows earlier runs streamed into it); move it aside yourself (e.g. mv '" +
        spec.offline.path + "' '" + spec.offline.path + ".reset-" + CompactUtc(now_ms) +
        "'), then run again with --reset; nothing was moved");
  }
  // sets/: the checkpoints and dead letters of a run with several feature sets (run/runtime.h).
  std::vector<std::string> names = {"checkpoints", "dead_letters", "sets"};
  if (offline_is_default) names.push_back("offline");
  std::vector<std::string> present;
  for (const std::string& name : names) {
    if (ExistsNoFollow(dir / name)) present.push_back(name);
  }
  if (!present.empty()) {
    const std::string stem = "reset-" + CompactUtc(now_ms);
    fs::path folder = dir / stem;
    for (int k = 2; ExistsNoFollow(folder); ++k) folder = dir / (stem + "-" + std::to_string(k));
    std::error_code ec;
    if (!fs::create_directory(folder, ec) || ec) {
      return Status::IoError("cannot create '" + folder.string() + "' to move the earlier runs' state into: " +
                             (ec ? ec.message() : std::string("it exists")));
    }
    reset.folder = folder.string();
    for (const std::string& name : present) {
      fs::rename(dir / name, folder / name, ec);
      if (ec) {
        std::string done = reset.moved.empty() ? "nothing was moved" : "moved so far:";
        for (const std::string& m : reset.moved) done += " " + m + "/";
        return Status::IoError("cannot move '" + (dir / name).string() + "' to '" + (folder / name).string() +
                               "': " + ec.message() + " (" + done + ")");
      }
      reset.moved.push_back(name);
      reset.report.push_back("--reset: moved " + (dir / name).string() + "/ to " + (folder / name).string() + "/");
    }
  } else {
    reset.report.push_back("--reset: nothing to move in '" + data_dir + "' (no checkpoints, dead letters or offline "
                           "tables of an earlier run)");
  }
  if (!offline_is_default && spec.offline.enabled) {
    reset.report.push_back("--reset: the offline store '" + spec.offline.path +
                           "' (offline.path) is outside the data directory and empty; left where it is");
  }
  if (ExistsNoFollow(dir / "ingest")) {
    reset.report.push_back("--reset: kept " + (dir / "ingest").string() +
                           "/, the HTTP ingest log of acknowledged events; this run reads it again from its oldest "
                           "record");
  }
  return reset;
}

}  // namespace freshet
