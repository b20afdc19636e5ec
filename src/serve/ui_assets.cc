#include "serve/ui_assets.h"

#include <cstddef>

namespace freshet {

// Defined in the file that cmake/embed_ui.cmake generates from ui/.
extern const UiAsset kUiAssets[];
extern const size_t kUiAssetCount;

const UiAsset* FindUiAsset(std::string_view name) {
  for (size_t k = 0; k < kUiAssetCount; ++k) {
    if (kUiAssets[k].name == name) return &kUiAssets[k];
  }
  return nullptr;
}

}  // namespace freshet
