//! The transport keys of every section that calls a backend (`[upstream]`, HTTP scorers, the
//! judge classifier, the fuser), declared once by [`with_transport_keys!`], and their validation
//! into a [`TransportConfig`].
//!
//! Each such section takes the keys at its own level (`[upstream] timeout_ms = ...`). They are
//! appended to the section's struct by a macro rather than read through `serde(flatten)`, which
//! serde does not support beside `deny_unknown_fields`: with inline fields serde's own error
//! names an unknown key and its line.

use super::TransportConfig;
use crate::config::{ConfigError, Validator, defaults};

/// Declares a struct with its own fields (each followed by a comma) and then the transport
/// keys, each an `Option`; `RawTransport::from(&section)` takes them out for
/// [`Validator::transport`].
macro_rules! with_transport_keys {
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $($own:tt)* }) => {
        $crate::backend::config::with_transport_keys! { @declare [$(#[$meta])* $vis struct $name { $($own)* }]
            /// Environment variable holding the API key.
            api_key_env: String,
            /// Limit for one call.
            timeout_ms: u64,
            /// Retries on connection errors, 429 and 5xx.
            max_retries: u32,
            /// First retry backoff.
            retry_backoff_ms: u64,
            /// Largest retry backoff.
            retry_backoff_max_ms: u64,
            /// Consecutive failures that take an endpoint out of rotation.
            eject_after_failures: u32,
            /// How long an ejected endpoint stays out.
            eject_cooldown_ms: u64,
            /// Concurrent calls per endpoint.
            max_in_flight: usize,
        }
    };
    (@declare [$(#[$meta:meta])* $vis:vis struct $name:ident { $($own:tt)* }]
        $($(#[$doc:meta])* $key:ident : $ty:ty,)*
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $($own)*
            $($(#[$doc])* pub(crate) $key: Option<$ty>,)*
        }

        // A trait impl rather than a method: `RawTransport` itself is declared by this macro
        // and would otherwise carry an unused method.
        impl From<&$name> for $crate::backend::config::RawTransport {
            fn from(section: &$name) -> Self {
                $crate::backend::config::RawTransport { $($key: ::std::clone::Clone::clone(&section.$key),)* }
            }
        }
    };
}
pub(crate) use with_transport_keys;

with_transport_keys! {
    /// The transport keys of one section, as read.
    #[derive(Debug, Default)]
    pub(crate) struct RawTransport {}
}

impl Validator<'_> {
    /// Validated transport keys of section `prefix`, with that section's defaults.
    pub(crate) fn transport(
        &self,
        prefix: &str,
        raw: RawTransport,
        timeout_ms: u64,
        max_retries: u32,
    ) -> Result<TransportConfig, ConfigError> {
        let key = |k: &str| format!("{prefix}.{k}");
        let retry_backoff_ms =
            self.positive(&key("retry_backoff_ms"), raw.retry_backoff_ms, defaults::RETRY_BACKOFF_MS)?;
        let retry_backoff_max_ms =
            self.positive(&key("retry_backoff_max_ms"), raw.retry_backoff_max_ms, defaults::RETRY_BACKOFF_MAX_MS)?;
        if retry_backoff_max_ms < retry_backoff_ms {
            return Err(self.invalid(&key("retry_backoff_max_ms"), "must be at least retry_backoff_ms"));
        }
        Ok(TransportConfig {
            api_key_env: raw.api_key_env,
            timeout_ms: self.positive(&key("timeout_ms"), raw.timeout_ms, timeout_ms)?,
            max_retries: raw.max_retries.unwrap_or(max_retries),
            retry_backoff_ms,
            retry_backoff_max_ms,
            eject_after_failures: self.positive(
                &key("eject_after_failures"),
                raw.eject_after_failures.map(u64::from),
                u64::from(defaults::EJECT_AFTER_FAILURES),
            )? as u32,
            eject_cooldown_ms: self.positive(
                &key("eject_cooldown_ms"),
                raw.eject_cooldown_ms,
                defaults::EJECT_COOLDOWN_MS,
            )?,
            max_in_flight: match raw.max_in_flight {
                Some(0) => return Err(self.invalid(&key("max_in_flight"), "must be greater than 0")),
                other => other,
            },
            typical_call_ms: None,
        })
    }
}
