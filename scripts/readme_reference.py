#!/usr/bin/env python3
"""The README's spec reference is `freshet validate --reference`, one heading level down: this script checks that
they agree (--check, exit 1 with a diff when not) or rewrites the README's copy from the binary.

    .venv/bin/python scripts/readme_reference.py [--check] [--bin build/freshet] [--readme README.md]
"""
from __future__ import annotations

import argparse
import difflib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "A spec is a YAML file."  # The first line of the generated text.
END = "## Semantics"              # The README section after the reference.


def generated(binary: str) -> str:
    text = subprocess.run([binary, "validate", "--reference"], check=True, capture_output=True, text=True).stdout
    # The reference's "###" headings sit under the README's "## Spec reference".
    return "\n".join("#" + line if line.startswith("###") else line for line in text.strip().splitlines()) + "\n"


def split(readme: str) -> tuple[str, str, str]:
    begin = readme.index(BEGIN)
    end = readme.index("\n" + END, begin) + 1
    return readme[:begin], readme[begin:end], readme[end:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when they differ")
    parser.add_argument("--bin", default=str(ROOT / "build" / "freshet"))
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    args = parser.parse_args()
    readme = Path(args.readme).read_text()
    head, copy, tail = split(readme)
    want = generated(args.bin) + "\n"
    if copy == want:
        return 0
    if args.check:
        sys.stdout.writelines(difflib.unified_diff(copy.splitlines(True), want.splitlines(True),
                                                   "README.md (spec reference)", "freshet validate --reference"))
        print("the README's spec reference differs from `freshet validate --reference`; "
              "run .venv/bin/python scripts/readme_reference.py to rewrite it", file=sys.stderr)
        return 1
    Path(args.readme).write_text(head + want + tail)
    print(f"rewrote the spec reference in {args.readme}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
