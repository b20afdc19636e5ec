// `freshet explain`: why one entity's feature has its value as of a time: the events that count, those
// excluded and why, and the arithmetic. Over a file of events or the offline store of `freshet run`.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "common/text.h"
#include "common/time.h"
#include "historical/explain.h"
#include "offline/tables.h"
#include "spec/spec.h"

namespace freshet::cli {

void RegisterExplain(CLI::App& app, int* exit_code) {
  struct Args {
    std::string spec;
    std::string entity;
    std::string feature;
    std::string at;
    std::string events;
    std::string data_dir = "freshet-data";
    bool json = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "explain",
      "Explain one entity's feature value as of a time: the events that count, the ones excluded and why (outside "
      "the window, where false, field missing, late, duplicate), and the arithmetic that gives the value");
  cmd->add_option("--spec", args->spec, "Feature spec (YAML)")->required();
  cmd->add_option("--entity", args->entity, "The entity, as in events (\"u123\", or 42)")->required();
  cmd->add_option("--feature", args->feature, "The feature's name, as in the spec")->required();
  cmd->add_option("--at", args->at, "As of this time: epoch milliseconds or RFC 3339 (2026-01-01T00:10:00Z)")->required();
  cmd->add_option("--events", args->events,
                  "Events, JSON lines. Without it, the offline events table of --data-dir is replayed, with the late "
                  "and duplicate events of its dead-letter files");
  cmd->add_option("--data-dir", args->data_dir, "The data folder of `freshet run`, read when --events is not given")
      ->capture_default_str();
  cmd->add_flag("--json", args->json, "One JSON object on stdout (the body of GET /v1/explain/{entity})");
  cmd->callback([args, exit_code] {
    std::optional<Spec> spec = LoadSpecOrReport(args->spec, exit_code);
    if (!spec) return;
    int feature = -1;
    std::vector<std::string_view> names;
    for (size_t k = 0; k < spec->features.size(); ++k) {
      names.push_back(spec->features[k].name);
      if (spec->features[k].name == args->feature) feature = static_cast<int>(k);
    }
    if (feature < 0) {
      std::string all;
      for (std::string_view n : names) all += (all.empty() ? "" : ", ") + std::string(n);
      std::string message = "--feature " + QuotedForMessage(args->feature) + " is not a feature of " + args->spec +
                            " (its features: " + all + ")";
      if (std::optional<std::string_view> close = ClosestMatch(args->feature, names)) {
        message += "; did you mean '" + std::string(*close) + "'?";
      }
      ReportFailure("explain", Status::Invalid(message), exit_code);
      return;
    }
    Result<int64_t> at = ParseTimeText(args->at);
    if (!at.ok()) {
      ReportFailure("explain", Status::Invalid("--at " + QuotedForMessage(args->at) + ": " + at.status().message() +
                                               "; give epoch milliseconds or RFC 3339, e.g. 2026-01-01T00:10:00Z"),
                    exit_code);
      return;
    }
    ExplainInput input;
    if (args->events.empty()) {
      input.events = EventInput::EventsTable(OfflinePathsFor(*spec, args->data_dir).events);
      std::error_code ec;
      for (const auto& entry : std::filesystem::directory_iterator(args->data_dir + "/dead_letters", ec)) {
        if (entry.path().extension() == ".jsonl") input.dead_letter_files.push_back(entry.path().string());
      }
      std::sort(input.dead_letter_files.begin(), input.dead_letter_files.end());
    } else {
      input.events = EventInput::JsonLines(args->events);
    }
    Result<Explanation> explanation = Explain(*spec, input, args->entity, feature, *at);
    if (ReportFailure("explain", explanation.status(), exit_code)) return;
    const std::string out = args->json ? ExplanationJson(*spec, *explanation) + "\n" : ExplanationText(*spec, *explanation);
    std::fwrite(out.data(), 1, out.size(), stdout);
    *exit_code = 0;
  });
}

}  // namespace freshet::cli
