// The web console's files (ui/ in the source tree: HTML, CSS, JavaScript), embedded in the binary at build
// time by cmake/embed_ui.cmake, so that `freshet run` serves the console at /ui with nothing to install and no
// Internet access: the pages load no file from anywhere but this server.
#pragma once

#include <string_view>

namespace freshet {

struct UiAsset {
  std::string_view name;          // Path under ui/ ("index.html", "console.js").
  std::string_view content_type;  // "text/html; charset=utf-8", ...
  std::string_view body;
};

// The embedded file named `name` (a path under ui/), or null when there is none.
const UiAsset* FindUiAsset(std::string_view name);

}  // namespace freshet
