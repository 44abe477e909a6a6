//! `tiered-limits`: chooses the rate-limit policy, key and cost of each
//! check from the caller's tier and the kind of operation being limited,
//! as its config says. See README.md.

use std::collections::BTreeMap;

use outrigger_plugin_sdk::{Classify, Config, Limit, Plugin, Request};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// The request attribute naming the caller's tier.
    #[serde(default = "default_tier_attribute")]
    tier_attribute: String,
    /// The request attribute naming the kind of operation the app is
    /// limiting (for example `read` or `write`).
    #[serde(default = "default_operation_attribute")]
    operation_attribute: String,
    /// The tier of callers that name none, or an unknown one.
    default_tier: String,
    tiers: BTreeMap<String, Tier>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tier {
    /// The sidecar policy checks of this tier go to.
    policy: String,
    /// Cost per operation kind; kinds not listed cost what the request
    /// asked for.
    #[serde(default)]
    costs: BTreeMap<String, u32>,
}

fn default_tier_attribute() -> String {
    "tier".into()
}

fn default_operation_attribute() -> String {
    "operation".into()
}

struct TieredLimits {
    settings: Settings,
}

impl Plugin for TieredLimits {
    fn new(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if !settings.tiers.contains_key(&settings.default_tier) {
            return Err(format!(
                "default_tier {:?} is not one of the tiers",
                settings.default_tier
            ));
        }
        if let Some((name, _)) = settings
            .tiers
            .iter()
            .find(|(_, tier)| tier.costs.values().any(|&cost| cost == 0))
        {
            return Err(format!("tier {name:?}: costs must be at least 1"));
        }
        Ok(TieredLimits { settings })
    }
}

impl Classify for TieredLimits {
    fn classify(&self, request: &Request) -> Option<Limit> {
        let settings = &self.settings;
        let (tier_name, tier) = request
            .attribute(&settings.tier_attribute)
            .and_then(|name| settings.tiers.get_key_value(name))
            .unwrap_or_else(|| {
                let name = &settings.default_tier;
                (name, &settings.tiers[name])
            });
        let cost = request
            .attribute(&settings.operation_attribute)
            .and_then(|kind| tier.costs.get(kind).copied())
            .or(request.cost)
            .unwrap_or(1);
        // Each tier counts in its own key space, so moving a caller to
        // another tier starts them afresh there.
        Some(Limit {
            policy: tier.policy.clone(),
            key: format!("{tier_name}:{}", request.target),
            cost,
        })
    }
}

outrigger_plugin_sdk::export!(TieredLimits: classify);

#[cfg(test)]
mod tests {
    use super::*;
    use outrigger_plugin_sdk::{Operation, Primitive};

    const CONFIG: &str = r#"{
        "default_tier": "free",
        "tiers": {
            "free": {"policy": "free", "costs": {"write": 5}},
            "pro": {"policy": "pro", "costs": {"write": 2, "read": 1}}
        }
    }"#;

    fn check(attributes: &[(&str, &str)], cost: u32) -> Request {
        Request {
            primitive: Primitive::Ratelimit,
            operation: Operation::Check,
            namespace: "ns".into(),
            target: "user-7".into(),
            member: None,
            policy: Some("api".into()),
            cost: Some(cost),
            value_size: None,
            caller: None,
            attributes: attributes
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn tier_and_operation_choose_policy_key_and_cost() {
        let p = TieredLimits::new(Config::from_json(CONFIG)).unwrap();
        let limit = p
            .classify(&check(&[("tier", "pro"), ("operation", "write")], 1))
            .unwrap();
        assert_eq!(
            (limit.policy.as_str(), limit.key.as_str(), limit.cost),
            ("pro", "pro:user-7", 2)
        );
        let limit = p.classify(&check(&[("operation", "write")], 1)).unwrap();
        assert_eq!((limit.policy.as_str(), limit.cost), ("free", 5));
        // Unknown tier → default; unlisted kind → the request's cost.
        let limit = p
            .classify(&check(&[("tier", "gold"), ("operation", "read")], 3))
            .unwrap();
        assert_eq!(
            (limit.policy.as_str(), limit.key.as_str(), limit.cost),
            ("free", "free:user-7", 3)
        );
    }

    #[test]
    fn bad_config_is_refused() {
        assert!(
            TieredLimits::new(Config::from_json(r#"{"default_tier": "x", "tiers": {}}"#)).is_err()
        );
        let zero = r#"{"default_tier": "a", "tiers": {"a": {"policy": "p", "costs": {"w": 0}}}}"#;
        assert!(TieredLimits::new(Config::from_json(zero)).is_err());
    }
}
