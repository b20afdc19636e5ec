#!/usr/bin/env bash
# Takes a fresh Debian 12 machine to a working Freshet build environment.
# Idempotent: installs only what is missing and prints nothing when there is nothing to do.
#   scripts/setup.sh          everything: the build, the tests (GoogleTest, redis-server, the Kafka broker's jars,
#                             chromium for the console's browser test) and the benchmarks
#   scripts/setup.sh --demo   what scripts/demo.sh needs: the build of `freshet` and the Python SDK's packages
#                             (a first demo on a fresh machine then does not wait for the test tools)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
demo_only=0
case "${1:-}" in
  "") ;;
  --demo) demo_only=1 ;;
  *) echo "setup: unknown option '$1' (use no option, or --demo for only what scripts/demo.sh needs)" >&2; exit 2 ;;
esac

# What `freshet` needs to build and run (the demo's part).
apt_packages=(
  build-essential cmake ninja-build pkg-config
  libsimdjson-dev libyaml-cpp-dev libcli11-dev libfmt-dev libabsl-dev
  libcpp-httplib-dev libhiredis-dev librdkafka-dev curl
  python3-venv
)
if [ "$demo_only" -eq 0 ]; then
  # The tests and benchmarks. chromium and chromium-driver: the web console's browser test
  # (tests/console_browser_test.py, headless, through Selenium) and scripts/ui_screenshots.sh.
  apt_packages+=(libgtest-dev libgmock-dev libbenchmark-dev redis-server wrk kcat maven chromium chromium-driver)
  # The Kafka broker (scripts/kafka.sh) needs a Java runtime, 17 or newer: Debian's unless one is on the PATH.
  java -version 2>&1 | grep -qE 'version "(1[7-9]|[2-9][0-9])' || apt_packages+=(default-jre-headless)
fi

missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Kafka broker for tests, the demo and benchmarks (scripts/kafka.sh): the jars that scripts/kafka/pom.xml lists,
# resolved once from Maven Central into .cache/kafka/m2 (a local repository of the project's own, so that a fresh
# machine and CI do the same), and their class path in .cache/kafka/classpath. Resolved again when the pom or the
# checkout's path changes, or a jar is missing. scripts/kafka4/pom.xml is a Kafka 4.x broker, the same way into
# .cache/kafka4, for tests/kafka4_test.py (Kafka 4.0 removed old protocol versions: the test shows this
# librdkafka still works with it).
jars_present() {  # CLASSPATH_FILE
  local jar
  [ -s "$1" ] || return 1
  while IFS= read -r -d: jar || [ -n "$jar" ]; do
    [ -f "$jar" ] || return 1
  done < "$1"
}
resolve_kafka() {  # POM CACHE_DIR
  local pom="$1" cache="$2" want
  want="$( { cat "$pom"; echo "$here"; } | sha256sum | cut -d' ' -f1)"
  if [ -f "$cache/.classpath.sha256" ] && [ "$(cat "$cache/.classpath.sha256")" = "$want" ] &&
     jars_present "$cache/classpath"; then
    return 0
  fi
  echo "setup: resolving the Kafka broker's jars (${pom#"$here"/}) into $cache" >&2
  mkdir -p "$cache"
  if ! mvn -q -B -f "$pom" -Dmaven.repo.local="$cache/m2" dependency:build-classpath \
       -Dmdep.outputFile="$cache/classpath.new" >"$cache/mvn.log" 2>&1; then
    cat "$cache/mvn.log" >&2
    echo "setup: resolving ${pom#"$here"/} failed" >&2
    exit 1
  fi
  mv "$cache/classpath.new" "$cache/classpath"
  echo "$want" > "$cache/.classpath.sha256"
}
if [ "$demo_only" -eq 0 ]; then
  resolve_kafka "$here/scripts/kafka/pom.xml" "$here/.cache/kafka"
  resolve_kafka "$here/scripts/kafka4/pom.xml" "$here/.cache/kafka4"
fi

# Project virtualenv for the Python-side tests (brute-force references, Parquet read-back).
venv="$here/.venv"
if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv" >&2
  python3 -m venv "$venv"
fi
# The demo's part (scripts/requirements-demo.txt) is a subset of the whole (requirements.txt includes it).
req="$here/scripts/requirements.txt"
stamp="$venv/.requirements.sha256"
if [ "$demo_only" -eq 1 ]; then
  req="$here/scripts/requirements-demo.txt"
  stamp="$venv/.requirements-demo.sha256"
fi
want="$(cat "$req" "$here/scripts/requirements-demo.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing Python requirements into $venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
  echo "$want" > "$stamp"
fi

# The Python SDK (python/), installed editable with no dependencies of its own (requirements.txt has them), so
# `import freshet` runs this checkout's code. Reinstalled when python/pyproject.toml or the checkout's path changes,
# or when the package cannot be found.
sdk_stamp="$venv/.freshet-sdk.sha256"
sdk_want="$( { cat "$here/python/pyproject.toml"; echo "$here"; } | sha256sum | cut -d' ' -f1)"
if [ ! -f "$sdk_stamp" ] || [ "$(cat "$sdk_stamp")" != "$sdk_want" ] ||
   ! "$venv/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('freshet') is None)"; then
  echo "setup: installing the Python SDK (python/) into $venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps -e "$here/python"
  echo "$sdk_want" > "$sdk_stamp"
fi
