#!/usr/bin/env bash
# The fraud example end to end on the embedded default: generate sample events, validate the spec,
# compute the five features as of the end of the day for the most active users, and show them.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build freshet >/dev/null
bin="$here/build/freshet"
ex="$here/examples/fraud"

echo "== 1. generate a day of fraud-workload events (10,000 users, 500,000 events, some disorder, late and malformed lines)"
"$bin" generate --users 10000 --events 500000 --seed 7 --disorder 3s --late-share 0.001 --malformed-share 0.001 \
  --output "$ex/events.jsonl"
head -n 3 "$ex/events.jsonl"

echo
echo "== 2. validate the spec"
"$bin" validate --spec "$ex/fraud.yaml"

echo
echo "== 3. features of the five users with the most purchases, at noon, 40 minutes later, and at the end of the day"
top_users=$(set +o pipefail; grep -a '"type":"purchase"' "$ex/events.jsonl" | grep -o '"user_id":"[^"]*"' | sort | uniq -c | sort -rn \
  | head -n 5 | sed 's/.*"user_id":"\([^"]*\)"/\1/')
{
  echo "user_id,ts"
  for u in $top_users; do
    echo "$u,2026-01-01T12:00:00Z"
    echo "$u,2026-01-01T12:40:00Z"
    echo "$u,2026-01-02T00:00:00Z"
  done
} > "$ex/entities.csv"
"$bin" historical --spec "$ex/fraud.yaml" --events "$ex/events.jsonl" --entities "$ex/entities.csv" \
  --output "$ex/features.csv" --dead-letters "$ex/dead_letters.jsonl"
column -s, -t < "$ex/features.csv"

echo
echo "== 4. the first dead letters (rejected and late events, with line and reason)"
head -n 3 "$ex/dead_letters.jsonl"
echo
echo "Files: $ex/events.jsonl, $ex/features.csv, $ex/dead_letters.jsonl"
