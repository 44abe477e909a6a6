"""The hostile plugin in Python: misbehaves in ``authorize`` as its
config's ``mode`` says. ``loop`` (never returns), ``bomb`` (allocates until
the memory cap), ``throw`` (raises), ``throw-at-load`` (raises in
``init``), anything else denies. The sidecar must contain each as it does
the Rust one's (../src/lib.rs)."""

from outrigger_plugin import Plugin, deny


class Hostile(Plugin):
    mode = "deny"

    def init(self, config):
        self.mode = config.get("mode", "deny")
        if self.mode == "throw-at-load":
            raise RuntimeError("refusing to start")

    def authorize(self, request):
        if self.mode == "loop":
            while True:
                pass
        if self.mode == "bomb":
            hoard = []
            while True:
                hoard.append(bytearray(1 << 20))
        if self.mode == "throw":
            raise RuntimeError("hostile plugin throws")
        return deny("denied by the hostile test plugin")


plugin = Hostile()
