//! Client options as the user wrote them, with secrets kept out of sight.
//!
//! librdkafka options (SASL passwords, TLS keys, OAuth secrets) pass through
//! verbatim, but the value of a secret option must never reach a log line,
//! an error message, `Debug` output or a run summary. This type is the only
//! place options are held, so it is the one place that decides what a
//! secret is and redacts it.

use rdkafka::ClientConfig;
use std::fmt;

/// Shown in place of a secret value.
pub const REDACTED: &str = "[redacted]";

/// librdkafka options, in the order they were given.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientOptions {
    entries: Vec<(String, String)>,
}

impl ClientOptions {
    /// Options from (key, value) pairs; a later pair replaces an earlier one
    /// with the same key.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let mut options = ClientOptions::default();
        for (key, value) in pairs {
            options.set(key, value);
        }
        options
    }

    /// Sets an option.
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let (key, value) = (key.into(), value.into());
        match self
            .entries
            .iter_mut()
            .find(|(existing, _)| *existing == key)
        {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key, value)),
        }
    }

    /// The value of an option, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(existing, _)| existing == key)
            .map(|(_, value)| value.as_str())
    }

    /// The options as (key, value) pairs, in order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
    }

    /// Whether an option's value is a secret, judged by its name: passwords,
    /// secrets, tokens, private keys, and whole JAAS or OAuth configs.
    pub fn is_secret(key: &str) -> bool {
        let key = key.to_ascii_lowercase();
        [
            "password",
            "secret",
            "token",
            "credential",
            "jaas",
            "oauthbearer.config",
        ]
        .iter()
        .any(|word| key.contains(word))
            || key == "ssl.key.pem"
            || key.ends_with(".key.pem")
    }

    /// `text` with every secret value replaced by [`REDACTED`]: applied to
    /// everything librdkafka says before it is shown.
    pub fn redact(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for (key, value) in &self.entries {
            if Self::is_secret(key) && !value.is_empty() {
                text = text.replace(value.as_str(), REDACTED);
            }
        }
        text
    }

    /// A librdkafka configuration with these options; `fixed` are set after
    /// them, because the engine depends on their values.
    pub(crate) fn client_config(&self, fixed: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in &self.entries {
            config.set(key, value);
        }
        for (key, value) in fixed {
            config.set(*key, *value);
        }
        config
    }
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(key, value)| {
                let shown = if Self::is_secret(key) {
                    REDACTED
                } else {
                    value
                };
                (key, shown)
            }))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret_options() -> ClientOptions {
        ClientOptions::from_pairs([
            ("bootstrap.servers", "127.0.0.1:9092"),
            ("security.protocol", "SASL_SSL"),
            ("sasl.username", "alice"),
            ("sasl.password", "hunter2-very-secret"),
            ("ssl.key.pem", "-----BEGIN PRIVATE KEY-----abc"),
            ("ssl.key.password", "pem-pass"),
            ("sasl.oauthbearer.client.secret", "oauth-s3cret"),
        ])
    }

    #[test]
    fn debug_output_hides_every_secret_and_keeps_the_rest() {
        let shown = format!("{:?}", secret_options());
        for secret in [
            "hunter2-very-secret",
            "BEGIN PRIVATE KEY",
            "pem-pass",
            "oauth-s3cret",
        ] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
        assert!(shown.contains("alice"), "{shown}");
        assert!(shown.contains("127.0.0.1:9092"), "{shown}");
        assert_eq!(shown.matches(REDACTED).count(), 4, "{shown}");
    }

    #[test]
    fn redact_removes_secret_values_from_any_text() {
        let options = secret_options();
        let message = "auth failed for alice with hunter2-very-secret (key pem-pass)";
        assert_eq!(
            options.redact(message),
            "auth failed for alice with [redacted] (key [redacted])"
        );
    }

    #[test]
    fn a_later_value_replaces_an_earlier_one() {
        let mut options = ClientOptions::from_pairs([("acks", "1")]);
        options.set("acks", "all");
        assert_eq!(options.get("acks"), Some("all"));
        assert_eq!(format!("{options:?}"), r#"{"acks": "all"}"#);
    }
}
