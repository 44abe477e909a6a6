#!/usr/bin/env python3
"""Runs the plugin guides as written: sdk/plugin-rust/README.md,
sdk/plugin-js/README.md and sdk/plugin-python/README.md, one after the
other (or those named on the command line).

Each in a fresh directory (with `outrigger` linked to this checkout, standing in
for the guide's `git clone`), in order:
  - ```<lang> file=PATH blocks are written to PATH;
  - ```sh guide blocks are run with bash (a `cd` carries over);
  - an ```output block right after a guide block must equal its stdout;
  - a ```sh guide-background block is started in the background, and the
    guide goes on once the sidecar answers on 127.0.0.1:7480.
Background processes are stopped at the end. Exit status 0 = the guide works.
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
GUIDES = [os.path.join(ROOT, "sdk", sdk, "README.md") for sdk in ("plugin-rust", "plugin-js", "plugin-python")]
PORT = 7480


def blocks(text):
    """(info, body) of every fenced block, in order."""
    return re.findall(r"^```([^\n]*)\n(.*?)^```\s*$", text, re.S | re.M)


def port_free(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def wait_healthy(proc, log, limit=600):
    deadline = time.time() + limit
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"guide: the background command exited ({proc.returncode}); log:\n{open(log).read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"guide: nothing answered on port {PORT} within {limit} s")


def main():
    for readme in sys.argv[1:] or GUIDES:
        print(f"guide: {os.path.relpath(readme, ROOT)}", flush=True)
        run(readme)
    print("guide: every step of every guide worked as written")


def run(readme):
    if not port_free(PORT):
        sys.exit(f"guide: port {PORT} is in use; the guide's sidecar needs it")
    work = tempfile.mkdtemp(prefix="sdk-guide-")
    os.symlink(ROOT, os.path.join(work, "outrigger"))
    cwd = work
    background = []
    items = blocks(open(readme).read())
    try:
        for i, (info, body) in enumerate(items):
            info = info.strip()
            file = re.search(r"\bfile=(\S+)", info)
            if file:
                path = os.path.join(cwd, file.group(1))
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write(body)
                print(f"guide: wrote {file.group(1)}", flush=True)
            elif info == "sh guide-background":
                print(f"guide (background) $ {body.strip()}", flush=True)
                proc = subprocess.Popen(["bash", "-c", body], cwd=cwd, start_new_session=True)
                background.append(proc)
                wait_healthy(proc, os.path.join(cwd, "outrigger.log"))
            elif info == "sh guide":
                print(f"guide $ {body.strip()}", flush=True)
                marker = os.path.join(work, ".pwd")
                script = f"set -euo pipefail\n{body}\npwd > {marker}\n"
                done = subprocess.run(["bash", "-c", script], cwd=cwd, stdout=subprocess.PIPE, text=True)
                if done.returncode != 0:
                    sys.exit(f"guide: that block failed ({done.returncode}); stdout:\n{done.stdout}")
                cwd = open(marker).read().strip()
                following = items[i + 1] if i + 1 < len(items) else None
                if following and following[0].strip() == "output":
                    want, got = following[1].strip(), done.stdout.strip()
                    if want != got:
                        sys.exit(f"guide: output differs\n--- the guide shows\n{want}\n--- it printed\n{got}")
                    print("guide: output as shown", flush=True)
    finally:
        for proc in background:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
    shutil.rmtree(work, ignore_errors=True)
    print(f"guide: every step of {os.path.relpath(readme, ROOT)} worked as written", flush=True)


if __name__ == "__main__":
    main()
