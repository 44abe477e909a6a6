"""Runs the README's five-minute tour as written: every ```python block,
in order, in one interpreter, against a fresh sidecar on the memory
backend; each ```output block must equal what the block before it printed.
Exit status 0 = the tour works."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "tests"))
from conftest import start_sidecar

README = Path(__file__).parent / "README.md"


def main() -> int:
    blocks = re.findall(r"^```(\w+)\n(.*?)^```\s*$", README.read_text(), re.S | re.M)
    pairs: list[tuple[str, str]] = []
    for (lang, body), after in zip(blocks, [*blocks[1:], ("", "")]):
        if lang == "python":
            expected = after[1] if after[0] == "output" else ""
            pairs.append((body, expected))
    if not pairs:
        print("tour: no python blocks in README.md")
        return 1
    sidecar = start_sidecar()
    try:
        env = {**os.environ, "OUTRIGGER_URL": sidecar.url}
        for i, (code, expected) in enumerate(pairs, 1):
            run = subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
            )
            if run.returncode != 0:
                print(f"tour block {i} failed:\n{run.stderr}")
                return 1
            if run.stdout != expected:
                print(f"tour block {i} printed:\n{run.stdout}\nthe README says:\n{expected}")
                return 1
    finally:
        sidecar.stop()
    print(f"tour: {len(pairs)} blocks ran as written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
