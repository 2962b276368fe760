//! The `HERALD_<SECTION>__<KEY>` mapping, both ways: variables as a figment source ([`EnvVar`]) and a
//! configuration as variables ([`Config::to_env`]), e.g. for a child `herald serve`.

use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};

use super::Config;

const PREFIX: &str = "HERALD_";
/// Between section and key: `HERALD_AMQP__PREFETCH` is `amqp.prefetch`.
const SEPARATOR: &str = "__";

/// `HERALD_AMQP__PREFETCH` for `("amqp", "prefetch")`.
pub fn var_name(section: &str, key: &str) -> String {
    format!(
        "{PREFIX}{}{SEPARATOR}{}",
        section.to_ascii_uppercase(),
        key.to_ascii_uppercase()
    )
}

/// One `HERALD_<SECTION>__<KEY>` variable as a configuration source. Values stay text (a phone number
/// like `+15005550006` must not become an integer); only `[...]` is read as a TOML array and `{...}` as a
/// TOML inline table (`HERALD_ROUTING__SMS='{44 = ["infobip", "twilio"]}'`).
pub(super) struct EnvVar {
    name: String,
    path: String,
    value: Value,
}

impl EnvVar {
    /// The `HERALD_*` variables among `vars`, in name order.
    pub(super) fn all(vars: impl IntoIterator<Item = (String, String)>) -> Vec<EnvVar> {
        let mut vars: Vec<EnvVar> = vars
            .into_iter()
            .filter_map(|(name, raw)| {
                let rest = name.strip_prefix(PREFIX)?;
                // HERALD_CONFIG names the file, it is not a key.
                if rest == "CONFIG" || rest.is_empty() {
                    return None;
                }
                let path = rest.to_ascii_lowercase().replace(SEPARATOR, ".");
                let value = if raw.trim_start().starts_with(['[', '{']) {
                    toml::from_str::<std::collections::BTreeMap<String, Value>>(&format!("v = {raw}"))
                        .ok()
                        .and_then(|mut m| m.remove("v"))
                        .unwrap_or_else(|| Value::from(raw.clone()))
                } else {
                    Value::from(raw)
                };
                Some(EnvVar { name, path, value })
            })
            .collect();
        vars.sort_by(|a, b| a.name.cmp(&b.name));
        vars
    }
}

impl Provider for EnvVar {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("environment variable {}", self.name))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let dict = figment::util::nest(&self.path, self.value.clone())
            .into_dict()
            .ok_or_else(|| figment::Error::from(format!("{}: not a key", self.name)))?;
        Ok(Map::from([(Profile::Default, dict)]))
    }
}

impl Config {
    /// This configuration as `HERALD_<SECTION>__<KEY>` variables: loaded with no file, they give it back.
    /// Every set key is listed, secrets included (it is for a child process's environment, never for
    /// output); an unset one (`channels.*`, `smtp.url`) is left out. Fails only on a path that is not UTF-8.
    pub fn to_env(&self) -> Result<Vec<(String, String)>, toml::ser::Error> {
        let config = toml::Value::try_from(self)?;
        // Every section is a struct, so a table; every key a value or a list.
        let sections = config.as_table().into_iter().flatten();
        let mut vars = Vec::new();
        for (section, keys) in sections.filter_map(|(s, keys)| Some((s, keys.as_table()?))) {
            for (key, value) in keys {
                let text = match value {
                    toml::Value::String(s) => s.clone(),
                    // Numbers as digits, lists as a TOML array (`["1s", "5s"]`), tables (`[routing]`) as an
                    // inline table, as `EnvVar` reads them.
                    other => other.to_string(),
                };
                vars.push((var_name(section, key), text));
            }
        }
        Ok(vars)
    }
}
