# Sourced by the bench scripts: sets up the machine and builds the Release targets given as arguments in
# build-release/, then sets $build to that folder.
release_build() {
  local root
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  bash "$root/scripts/setup.sh"
  build="$root/build-release"
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFRESHET_BUILD_TESTS=OFF >/dev/null
  ninja -C "$build" "$@" >&2
}

# The freshet binary a benchmark runs: `bin` when the script's --bin set it, else a release build's (built now).
release_freshet_unless_given() {
  if [ -z "${bin:-}" ]; then
    release_build freshet
    bin="$build/freshet"
  fi
}

# Waits until the `freshet run` with pid PID has logged its HTTP address in LOG and prints the port; exits with
# the log on stderr if the process ended first.
freshet_port() {
  local log="$1" pid="$2" port=""
  while [ -z "$port" ]; do
    port=$(grep -o 'http://127.0.0.1:[0-9]*' "$log" 2>/dev/null | head -1 | sed 's/.*://') || true
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
    [ -n "$port" ] || sleep 0.05
  done
  echo "$port"
}
