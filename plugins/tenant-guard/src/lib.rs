//! `tenant-guard`: callers may only touch keys, tags, patterns, locks,
//! rate-limit keys, rooms, channels, counters and maps under their tenant's
//! prefix.
//!
//! The tenant comes from a request attribute (`x-outrigger-attr-tenant` by
//! default); the prefix is the tenant followed by the separator (`:`). A
//! request without a tenant, or whose target is outside the prefix, is
//! denied with a reason. See README.md.

use outrigger_plugin_sdk::{Authorize, Config, Decision, Operation, Plugin, Request};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// The request attribute naming the tenant.
    attribute: String,
    /// Between the tenant and the rest of a name.
    separator: String,
    /// Callers (by `x-outrigger-caller`) allowed everywhere.
    exempt_callers: Vec<String>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            attribute: "tenant".into(),
            separator: ":".into(),
            exempt_callers: Vec::new(),
        }
    }
}

struct TenantGuard {
    settings: Settings,
}

impl Plugin for TenantGuard {
    fn new(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if settings.separator.is_empty() {
            return Err("separator must not be empty".into());
        }
        Ok(TenantGuard { settings })
    }
}

impl Authorize for TenantGuard {
    fn authorize(&self, request: &Request) -> Decision {
        if let Some(caller) = request.caller()
            && self.settings.exempt_callers.iter().any(|c| c == caller)
        {
            return Decision::Allow;
        }
        let Some(tenant) = request.attribute(&self.settings.attribute) else {
            return Decision::deny(format!(
                "no tenant: send the x-outrigger-attr-{} header",
                self.settings.attribute
            ));
        };
        if tenant.is_empty() || tenant.contains(is_glob_or_separator(&self.settings.separator)) {
            return Decision::deny(format!("invalid tenant {tenant:?}"));
        }
        let prefix = format!("{tenant}{}", self.settings.separator);
        let what = match request.operation {
            Operation::InvalidatePattern | Operation::Scan | Operation::SubscribePattern => {
                "pattern"
            }
            Operation::InvalidateTag => "tag",
            Operation::Rooms => "member",
            _ => "target",
        };
        if request.target.starts_with(&prefix) {
            Decision::Allow
        } else {
            Decision::deny(format!(
                "tenant {tenant} may only use names under {prefix:?}: {what} {:?} is not",
                request.target
            ))
        }
    }
}

/// A tenant must be literal text: no glob metacharacters (a pattern under
/// `a*:` would reach other tenants) and no separator.
fn is_glob_or_separator(separator: &str) -> impl Fn(char) -> bool + '_ {
    move |c| matches!(c, '*' | '?' | '[' | ']' | '\\') || separator.contains(c)
}

outrigger_plugin_sdk::export!(TenantGuard: authorize);

#[cfg(test)]
mod tests {
    use super::*;
    use outrigger_plugin_sdk::Primitive;

    fn guard(json: &str) -> TenantGuard {
        TenantGuard::new(Config::from_json(json)).unwrap()
    }

    fn request(operation: Operation, target: &str, tenant: Option<&str>) -> Request {
        Request {
            primitive: Primitive::Cache,
            operation,
            namespace: "ns".into(),
            target: target.into(),
            member: None,
            policy: None,
            cost: None,
            value_size: None,
            caller: None,
            attributes: tenant
                .map(|t| vec![("tenant".to_string(), t.to_string())])
                .unwrap_or_default(),
        }
    }

    #[test]
    fn allows_only_the_tenants_prefix() {
        let g = guard("{}");
        assert_eq!(
            g.authorize(&request(Operation::Read, "acme:x", Some("acme"))),
            Decision::Allow
        );
        assert!(matches!(
            g.authorize(&request(Operation::Read, "globex:x", Some("acme"))),
            Decision::Deny(reason) if reason.contains("acme:")
        ));
        // A bare tenant name is not under the prefix.
        assert!(matches!(
            g.authorize(&request(Operation::Read, "acme", Some("acme"))),
            Decision::Deny(_)
        ));
        assert!(matches!(
            g.authorize(&request(Operation::Read, "acme:x", None)),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn tenants_with_glob_characters_are_refused() {
        let g = guard("{}");
        assert!(matches!(
            g.authorize(&request(Operation::InvalidatePattern, "a*:x", Some("a*"))),
            Decision::Deny(reason) if reason.contains("invalid tenant")
        ));
    }

    #[test]
    fn exempt_callers_and_settings() {
        let g = guard(r#"{"attribute": "org", "separator": "/", "exempt_callers": ["ops"]}"#);
        let mut r = request(Operation::Write, "x/y", None);
        r.attributes = vec![("org".into(), "x".into())];
        assert_eq!(g.authorize(&r), Decision::Allow);
        let mut r = request(Operation::Write, "other/y", None);
        r.caller = Some("ops".into());
        assert_eq!(g.authorize(&r), Decision::Allow);
        assert!(TenantGuard::new(Config::from_json(r#"{"bogus": 1}"#)).is_err());
    }
}
