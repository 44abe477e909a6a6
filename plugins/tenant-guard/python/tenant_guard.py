"""tenant-guard in Python: the same settings, decisions and reasons as the
Rust build (../src/lib.rs; see ../README.md)."""

from __future__ import annotations

import json
from typing import Any

from outrigger_plugin import Operation, Plugin, allow, attribute, deny

KNOWN = {"attribute", "separator", "exempt_callers"}
GLOB = set("*?[]\\")


def quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


class TenantGuard(Plugin):
    def __init__(self) -> None:
        self.attribute = "tenant"
        self.separator = ":"
        self.exempt_callers: list[str] = []

    def init(self, config: dict[str, Any]) -> None:
        unknown = sorted(set(config) - KNOWN)
        if unknown:
            raise ValueError(f"unknown field `{unknown[0]}`")
        attribute_name = config.get("attribute", "tenant")
        separator = config.get("separator", ":")
        exempt = config.get("exempt_callers", [])
        if not isinstance(attribute_name, str) or not isinstance(separator, str):
            raise ValueError("attribute and separator must be strings")
        if not isinstance(exempt, list) or not all(isinstance(c, str) for c in exempt):
            raise ValueError("exempt_callers must be a list of strings")
        if separator == "":
            raise ValueError("separator must not be empty")
        self.attribute, self.separator, self.exempt_callers = attribute_name, separator, exempt

    def authorize(self, request):
        if request.caller is not None and request.caller in self.exempt_callers:
            return allow()
        tenant = attribute(request, self.attribute)
        if tenant is None:
            return deny(f"no tenant: send the x-outrigger-attr-{self.attribute} header")
        if tenant == "" or any(c in GLOB or c in self.separator for c in tenant):
            return deny(f"invalid tenant {quoted(tenant)}")
        prefix = tenant + self.separator
        if request.target.startswith(prefix):
            return allow()
        if request.operation in (
            Operation.INVALIDATE_PATTERN,
            Operation.SCAN,
            Operation.SUBSCRIBE_PATTERN,
        ):
            what = "pattern"
        elif request.operation == Operation.INVALIDATE_TAG:
            what = "tag"
        elif request.operation == Operation.ROOMS:
            what = "member"
        else:
            what = "target"
        return deny(
            f"tenant {tenant} may only use names under {quoted(prefix)}: "
            f"{what} {quoted(request.target)} is not"
        )


plugin = TenantGuard()
