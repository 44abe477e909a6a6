"""The hostile plugin in Python: misbehaves in ``authorize`` and
``on_value`` as its config's ``mode`` says. ``loop`` (never returns),
``bomb`` (allocates until the memory cap), ``throw`` (raises),
``throw-at-load`` (raises in ``init``), ``mark`` (behaves: ``on_value``
wraps each value, ``{label}>value`` on its way in and ``value<{label}`` on
its way out), anything else denies. The sidecar must contain each as it
does the Rust one's (../src/lib.rs)."""

from outrigger_plugin import Plugin, ValuePoint, deny, refuse, replace


class Hostile(Plugin):
    mode = "deny"
    label = ""

    def init(self, config):
        self.mode = config.get("mode", "deny")
        self.label = config.get("label", "")
        if self.mode == "throw-at-load":
            raise RuntimeError("refusing to start")

    def misbehave(self):
        if self.mode == "loop":
            while True:
                pass
        if self.mode == "bomb":
            hoard = []
            while True:
                hoard.append(bytearray(1 << 20))
        if self.mode == "throw":
            raise RuntimeError("hostile plugin throws")
        return "denied by the hostile test plugin"

    def authorize(self, request):
        return deny(self.misbehave())

    def on_value(self, event):
        if self.mode != "mark":
            return refuse(self.misbehave())
        if event.point in (ValuePoint.CACHE_WRITE, ValuePoint.PUBLISH):
            return replace(f"{self.label}>".encode() + event.value)
        return replace(event.value + f"<{self.label}".encode())


plugin = Hostile()
