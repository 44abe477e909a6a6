"""outrigger-plugin build APP.py [-o OUT.wasm]: APP.py (a module defining
``plugin``) and this package, made a WebAssembly component of the plugin
world with componentize-py."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

# The world's exports over the plugin's hooks: those it leaves out answer
# as if it were not there (allow, no limit, nothing more). The sidecar
# calls `init` once, on the instance it loads the plugin with; every
# instance it makes later (more calls at once, or a failed call's
# replacement) runs the plugin's `init` before its first hook too.
WRAPPER = '''
import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, types

from {module} import plugin as _plugin

_HOOKS = [
    hook
    for hook, name in (
        (types.Hook.AUTHORIZE, "authorize"),
        (types.Hook.CLASSIFY, "classify"),
        (types.Hook.ON_WRITE, "on_write"),
        (types.Hook.ON_VALUE, "on_value"),
    )
    if callable(getattr(_plugin, name, None))
]


_ready = False


def _set_up():
    global _ready
    if not _ready:
        text = host.config()
        _plugin.init(json.loads(text) if text else {{}})
        _ready = True


class WitWorld(wit_world.WitWorld):
    def hooks(self):
        return list(_HOOKS)

    def init(self):
        try:
            _set_up()
        except Exception as err:
            raise Err(str(err))

    def authorize(self, request):
        _set_up()
        hook = getattr(_plugin, "authorize", None)
        return hook(request) if hook else types.Decision_Allow()

    def classify(self, request):
        _set_up()
        hook = getattr(_plugin, "classify", None)
        return hook(request) if hook else None

    def on_write(self, event):
        _set_up()
        hook = getattr(_plugin, "on_write", None)
        return hook(event) if hook else []

    def on_value(self, event):
        _set_up()
        hook = getattr(_plugin, "on_value", None)
        return hook(event) if hook else types.ValueDecision_Keep()
'''


def wit_dir() -> Path:
    for candidate in (HERE / "wit", HERE.parents[2] / "wit"):
        if (candidate / "outrigger.wit").exists():
            return candidate
    raise SystemExit(f"no plugin WIT next to {HERE}")


def componentize_py() -> str:
    found = Path(sys.executable).with_name("componentize-py")
    if found.exists():
        return str(found)
    path = shutil.which("componentize-py")
    if path is None:
        raise SystemExit("componentize-py is not installed (pip install componentize-py)")
    return path


def build(app: Path, out: Path) -> None:
    if app.suffix != ".py" or not app.is_file():
        raise SystemExit(f"{app}: not a Python file")
    with tempfile.TemporaryDirectory(prefix="outrigger-plugin-") as work:
        (Path(work) / "outrigger_app.py").write_text(WRAPPER.format(module=app.stem))
        # This package beside it, and nothing else of where it is installed.
        shutil.copytree(
            HERE,
            Path(work) / "outrigger_plugin",
            ignore=shutil.ignore_patterns("__pycache__", "wit", "build.py", "__main__.py"),
        )
        subprocess.run(
            [
                componentize_py(),
                "-d", str(wit_dir()),
                "-w", "plugin",
                "componentize", "outrigger_app",
                "-p", work,
                "-p", str(app.resolve().parent),
                "-o", str(out),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    print(f"{out}: {out.stat().st_size / 1e6:.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(prog="outrigger-plugin")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("build", help="make APP.py a plugin component")
    cmd.add_argument("app", type=Path)
    cmd.add_argument("-o", "--out", type=Path, default=Path("plugin.wasm"))
    args = parser.parse_args()
    try:
        build(args.app, args.out)
    except subprocess.CalledProcessError as err:
        raise SystemExit(f"componentize-py failed (exit {err.returncode})") from None


if __name__ == "__main__":
    main()
