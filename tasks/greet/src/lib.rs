//! `greet(name)`: a greeting whose text comes from the manifest's config values, and
//! `config_value(key)`: one config value as the guest sees it (`null` when not granted).

use sprout_guest::task;

/// The greeting used when the manifest grants no `greeting` value.
const DEFAULT_GREETING: &str = "Hi";

/// `"<greeting>, <name>!"`, with `greeting` from `[capabilities] config` in greet.toml.
#[task]
fn greet(name: String) -> String {
    let greeting = sprout_guest::config("greeting").unwrap_or_else(|| DEFAULT_GREETING.into());
    format!("{greeting}, {name}!")
}

/// The config value `key`, or `null` when the manifest does not grant it.
#[task]
fn config_value(key: String) -> Option<String> {
    sprout_guest::config(&key)
}

sprout_guest::export_tasks!(greet, config_value);

#[cfg(test)]
mod tests {
    use super::*;
    use sprout_guest::serde_json::json;
    use sprout_guest::testing;

    #[test]
    fn greets_with_the_configured_greeting() {
        testing::reset();
        assert_eq!(greet("Ada".into()), "Hi, Ada!");
        testing::set_config("greeting", "Bonjour");
        assert_eq!(greet("Ada".into()), "Bonjour, Ada!");
        assert_eq!(
            TASKS.call("config_value", json!(["greeting"]), json!({})).unwrap(),
            json!("Bonjour")
        );
        assert_eq!(
            TASKS.call("config_value", json!(["region"]), json!({})).unwrap(),
            json!(null)
        );
        testing::reset();
    }
}
