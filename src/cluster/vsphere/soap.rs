//! vim25 SOAP envelopes (as govmomi and pyVmomi send them), managed object
//! references, faults, and the provider's error type.

use super::xml::{escape, Element};

/// A managed object reference: `<_this type="VirtualMachine">vm-42</_this>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MoRef {
    pub kind: String,
    pub value: String,
}

impl MoRef {
    pub fn new(kind: &str, value: &str) -> MoRef {
        MoRef {
            kind: kind.to_string(),
            value: value.to_string(),
        }
    }

    /// From an element carrying `type="…"` and the id as text.
    pub fn from_element(e: &Element) -> Option<MoRef> {
        let kind = e.type_attr.as_deref()?;
        let value = e.text.trim();
        (!value.is_empty()).then(|| MoRef::new(kind, value))
    }

    /// As the element `name` of a request.
    pub fn el(&self, name: &str) -> String {
        format!(
            "<{name} type=\"{}\">{}</{name}>",
            escape(&self.kind),
            escape(&self.value)
        )
    }
}

impl std::fmt::Display for MoRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// The whole request for method `op` on `this` with `args` (its parameters
/// after `_this`, in WSDL order).
pub fn envelope(op: &str, this: &MoRef, args: &str) -> String {
    format!(
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?>"#,
            r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" "#,
            r#"xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">"#,
            r#"<soapenv:Body><{op} xmlns="urn:vim25">{this}{args}</{op}></soapenv:Body></soapenv:Envelope>"#
        ),
        op = op,
        this = this.el("_this"),
        args = args
    )
}

/// A SOAP fault: the vim25 fault type (`InvalidLogin`, `ManagedObjectNotFound`…)
/// and vCenter's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub kind: String,
    pub message: String,
}

impl Fault {
    /// The fault of a `soapenv:Fault` element.
    pub fn from_soap(f: &Element) -> Fault {
        let detail = f.child("detail").and_then(|d| d.children.first());
        Fault {
            kind: detail.map(fault_kind).unwrap_or_else(|| "unknown".into()),
            message: f.text_at("faultstring"),
        }
    }

    /// The fault of a task's `info.error` (a LocalizedMethodFault).
    pub fn from_localized(e: &Element) -> Fault {
        Fault {
            kind: e
                .child("fault")
                .map(fault_kind)
                .unwrap_or_else(|| "unknown".into()),
            message: e.text_at("localizedMessage"),
        }
    }

    /// Faults that say "busy, try again": another task holds the object, or
    /// vCenter lost its host for a moment.
    pub fn is_busy(&self) -> bool {
        matches!(
            self.kind.as_str(),
            "TaskInProgress" | "ConcurrentAccess" | "HostCommunication" | "ResourceBusy"
        )
    }

    /// The message, or the fault's type when vCenter sent none.
    pub fn shown(&self) -> String {
        if self.message.is_empty() {
            self.kind.clone()
        } else {
            format!("{} ({})", self.message, self.kind)
        }
    }
}

/// `xsi:type="InvalidLogin"`, else the element name less its `Fault` suffix.
fn fault_kind(e: &Element) -> String {
    e.xsi_type
        .clone()
        .unwrap_or_else(|| e.name.trim_end_matches("Fault").to_string())
}

/// What went wrong talking to vCenter.
#[derive(Debug, thiserror::Error)]
pub enum VsError {
    #[error("{method}: {}", .fault.shown())]
    Fault { method: String, fault: Fault },
    #[error("{what} failed: {}", .fault.shown())]
    Task { what: String, fault: Fault },
    #[error("{what} did not finish within {secs} s")]
    TaskTimeout { what: String, secs: u64 },
    #[error("{method}: no answer: {message}")]
    Transport {
        method: String,
        message: String,
        retry: bool,
    },
    #[error("{method}: HTTP {status}: {message}")]
    Http {
        method: String,
        status: u16,
        message: String,
    },
    /// A configured inventory object that does not exist.
    #[error("{kind} {name:?} not found{}", if .known.is_empty() { String::new() } else { format!(" (there are: {})", .known.join(", ")) })]
    NotFound {
        kind: &'static str,
        name: String,
        known: Vec<String>,
    },
    #[error("{0}")]
    Other(String),
}

impl VsError {
    pub fn retryable(&self) -> bool {
        match self {
            VsError::Fault { fault, .. } | VsError::Task { fault, .. } => fault.is_busy(),
            VsError::Transport { retry, .. } => *retry,
            VsError::Http { status, .. } => *status >= 500 || *status == 429,
            VsError::TaskTimeout { .. } => true,
            VsError::NotFound { .. } | VsError::Other(_) => false,
        }
    }

    /// The object is gone (`ManagedObjectNotFound`).
    pub fn is_gone(&self) -> bool {
        matches!(self, VsError::Fault { fault, .. } | VsError::Task { fault, .. } if fault.kind == "ManagedObjectNotFound")
    }

    pub fn fault_kind(&self) -> Option<&str> {
        match self {
            VsError::Fault { fault, .. } | VsError::Task { fault, .. } => Some(&fault.kind),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// vcsim's answer to a Login with a wrong password (recorded).
    const INVALID_LOGIN: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>Login failure</faultstring><detail><InvalidLoginFault xmlns="urn:vim25" xsi:type="InvalidLogin"></InvalidLoginFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#;

    #[test]
    fn a_login_fault_is_typed_and_not_busy() {
        let env = Element::parse(INVALID_LOGIN).unwrap();
        let f = Fault::from_soap(env.at("Body/Fault").unwrap());
        assert_eq!(f.kind, "InvalidLogin");
        assert_eq!(f.message, "Login failure");
        assert!(!f.is_busy());
        let e = VsError::Fault {
            method: "Login".into(),
            fault: f,
        };
        assert!(!e.retryable());
        assert_eq!(e.to_string(), "Login: Login failure (InvalidLogin)");
    }

    #[test]
    fn busy_faults_are_retryable_and_missing_objects_are_gone() {
        let busy = VsError::Task {
            what: "x".into(),
            fault: Fault {
                kind: "TaskInProgress".into(),
                message: String::new(),
            },
        };
        assert!(busy.retryable() && !busy.is_gone());
        let gone = VsError::Fault {
            method: "Destroy_Task".into(),
            fault: Fault {
                kind: "ManagedObjectNotFound".into(),
                message: "has already been deleted".into(),
            },
        };
        assert!(gone.is_gone() && !gone.retryable());
    }

    #[test]
    fn the_envelope_escapes_the_reference() {
        let e = envelope("Logout", &MoRef::new("SessionManager", "a<b"), "");
        assert!(e.contains(
            r#"<Logout xmlns="urn:vim25"><_this type="SessionManager">a&lt;b</_this></Logout>"#
        ));
    }
}
