//! Watched sources: a URL checked on a schedule; when the image it names
//! changes, a scan is queued as the watch's owner, and a passing scan
//! publishes the new version (demoting the old ones) as any scan does.

pub mod check;
pub mod request;
pub mod scheduler;
pub mod source;

pub use source::WatchKind;
