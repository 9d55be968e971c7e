use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A UUID v7 identity (ids sort by creation time), one type per kind of
/// thing so a batch id is never taken for a job id.
macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $bad:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            pub fn new() -> Self {
                $name(Uuid::now_v7())
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }

            /// The last 8 hex digits (random; the leading ones are a timestamp shared
            /// by ids created within a minute), for short displays.
            pub fn short(&self) -> String {
                let s = self.0.simple().to_string();
                s[s.len() - 8..].to_string()
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        #[derive(Debug, thiserror::Error)]
        #[error("not a {what} id: {0:?} (expected a UUID such as 0192f0c1-8a6e-7c3d-9f10-1b2c3d4e5f60)", what = $what)]
        pub struct $bad(String);

        impl FromStr for $name {
            type Err = $bad;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s.trim())
                    .map($name)
                    .map_err(|_| $bad(s.to_string()))
            }
        }
    };
}

uuid_id!(
    /// A job's identity.
    JobId,
    BadJobId,
    "job"
);
uuid_id!(
    /// A batch's identity: the images of one manifest.
    BatchId,
    BadBatchId,
    "batch"
);
