// tenant-guard in TypeScript: the same settings, decisions and reasons as
// the Rust build (../src/lib.rs; see ../README.md).
import { type Request, allow, attribute, definePlugin, deny } from "@outrigger/plugin";

interface Settings {
  attribute: string;
  separator: string;
  exemptCallers: string[];
}

const known = new Set(["attribute", "separator", "exempt_callers"]);
let settings: Settings = { attribute: "tenant", separator: ":", exemptCallers: [] };

function parse(config: Record<string, unknown>): Settings {
  for (const key of Object.keys(config)) {
    if (!known.has(key)) throw new Error(`unknown field \`${key}\``);
  }
  const text = (key: string, fallback: string): string => {
    const value = config[key] ?? fallback;
    if (typeof value !== "string") throw new Error(`${key} must be a string`);
    return value;
  };
  const exempt = config.exempt_callers ?? [];
  if (!Array.isArray(exempt) || !exempt.every((c) => typeof c === "string")) {
    throw new Error("exempt_callers must be a list of strings");
  }
  const parsed = {
    attribute: text("attribute", "tenant"),
    separator: text("separator", ":"),
    exemptCallers: exempt as string[],
  };
  if (parsed.separator === "") throw new Error("separator must not be empty");
  return parsed;
}

/** A tenant must be literal text: no glob metacharacters, no separator. */
function invalid(tenant: string): boolean {
  return tenant === "" || [...tenant].some((c) => "*?[]\\".includes(c) || settings.separator.includes(c));
}

function what(request: Request): string {
  switch (request.operation) {
    case "invalidate-pattern":
    case "scan":
    case "subscribe-pattern":
      return "pattern";
    case "invalidate-tag":
      return "tag";
    case "rooms":
      return "member";
    default:
      return "target";
  }
}

export default definePlugin({
  init(config: Record<string, unknown>) {
    settings = parse(config);
  },

  authorize(request: Request) {
    if (request.caller !== undefined && settings.exemptCallers.includes(request.caller)) {
      return allow();
    }
    const tenant = attribute(request, settings.attribute);
    if (tenant === undefined) {
      return deny(`no tenant: send the x-outrigger-attr-${settings.attribute} header`);
    }
    if (invalid(tenant)) return deny(`invalid tenant ${JSON.stringify(tenant)}`);
    const prefix = `${tenant}${settings.separator}`;
    if (request.target.startsWith(prefix)) return allow();
    return deny(
      `tenant ${tenant} may only use names under ${JSON.stringify(prefix)}: ${what(request)} ${JSON.stringify(request.target)} is not`,
    );
  },
});
