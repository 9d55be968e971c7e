//! `[auth]`: who may log in (local users or an LDAP/AD directory), how long a
//! login lasts, API tokens, the metrics endpoint and the catalog's name rule.

use std::collections::BTreeMap;
use std::path::PathBuf;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::domain::Role;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthBackendKind {
    /// Users in vmscan's database (`vmscan user add`), Argon2id passwords.
    Local,
    /// An LDAP directory: Active Directory or OpenLDAP.
    Ldap,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub backend: AuthBackendKind,
    /// A session unused this long ends.
    pub session_idle_secs: u64,
    /// A session ends this long after login, used or not.
    pub session_max_secs: u64,
    /// Mark the session cookie `Secure`: `auto` when `server.external_url`
    /// is https or the request came over TLS (`X-Forwarded-Proto: https`).
    pub cookie_secure: CookieSecure,
    /// Failed logins allowed per user name, and per client address, in `login_window_secs`.
    pub max_failed_logins: u32,
    pub login_window_secs: u64,
    /// `/metrics`: open when unset, else `Authorization: Bearer <this>`.
    /// Set it with `VMSCAN_AUTH__METRICS_TOKEN`; never shown.
    #[serde(serialize_with = "redact")]
    pub metrics_token: Option<SecretString>,
    /// Domains an "also tell" address on a submission may be in (e.g. `example.com`).
    /// Empty: no extra addresses; scan email goes to the requester and `notify.email.admins`.
    pub notify_domains: Vec<String>,
    /// Who may publish an image name nobody has published yet.
    pub new_image_names: NewNames,
    /// Longest lifetime of an API token, in days (0: no limit).
    pub max_token_days: u32,
    /// Host names (with or without port) the dashboard is reached by, besides
    /// IP literals, `localhost`, this machine's name and `server.external_url`'s host.
    /// State-changing requests naming another `Host` are refused (DNS rebinding).
    pub allowed_hosts: Vec<String>,
    pub ldap: LdapConfig,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CookieSecure {
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NewNames {
    /// Any requester may publish a new name; it is then theirs (or their group's).
    Requesters,
    /// Only admins may publish a name nobody has published yet.
    Admins,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LdapTls {
    /// Plain LDAP (a directory on localhost only).
    None,
    /// `ldap://` upgraded with the StartTLS extended operation.
    Starttls,
    /// `ldaps://`: TLS from the first byte.
    Ldaps,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LdapConfig {
    /// `ldap://dc1.example.com:389` or `ldaps://dc1.example.com:636`.
    pub url: String,
    pub tls: LdapTls,
    /// PEM file with the CA(s) that signed the directory's certificate; empty: system roots.
    pub ca_bundle: Option<PathBuf>,
    /// Skip certificate verification (test directories only).
    pub verify_tls: bool,
    /// The service account that searches for users, e.g.
    /// `CN=svc-vmscan,OU=Service,DC=example,DC=com`.
    pub bind_dn: String,
    /// Set it with `VMSCAN_AUTH__LDAP__BIND_PASSWORD`; never shown.
    #[serde(serialize_with = "redact")]
    pub bind_password: Option<SecretString>,
    /// Where users are searched (subtree).
    pub user_base: String,
    /// `{username}` is replaced by the escaped login name. AD:
    /// `(&(objectClass=user)(sAMAccountName={username})(!(userAccountControl:1.2.840.113556.1.4.803:=2)))`;
    /// OpenLDAP: `(&(objectClass=inetOrgPerson)(uid={username}))`.
    pub user_filter: String,
    pub display_name_attr: String,
    pub mail_attr: String,
    /// The attribute listing the user's groups (AD and OpenLDAP's memberof overlay: `memberOf`).
    pub group_attr: String,
    /// AD only: also count nested groups (LDAP_MATCHING_RULE_IN_CHAIN,
    /// 1.2.840.113556.1.4.1941), searched under `group_base`.
    pub nested_groups: bool,
    /// Where groups live, for `nested_groups`; empty: `user_base`.
    pub group_base: String,
    /// Group DN → role. A user gets the highest role of their groups.
    pub group_roles: BTreeMap<String, Role>,
    /// Role for a user in no mapped group; unset: such users cannot log in.
    pub default_role: Option<Role>,
    /// Connect, bind and search each give up after this long.
    pub timeout_secs: u64,
}

fn redact<S: serde::Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_some("***"),
        None => s.serialize_none(),
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            backend: AuthBackendKind::Local,
            session_idle_secs: 2 * 3600,
            session_max_secs: 12 * 3600,
            cookie_secure: CookieSecure::Auto,
            max_failed_logins: 5,
            login_window_secs: 300,
            metrics_token: None,
            notify_domains: Vec::new(),
            new_image_names: NewNames::Requesters,
            max_token_days: 0,
            allowed_hosts: Vec::new(),
            ldap: LdapConfig::default(),
        }
    }
}

impl Default for LdapConfig {
    fn default() -> Self {
        LdapConfig {
            url: String::new(),
            tls: LdapTls::Starttls,
            ca_bundle: None,
            verify_tls: true,
            bind_dn: String::new(),
            bind_password: None,
            user_base: String::new(),
            user_filter: "(&(objectClass=user)(sAMAccountName={username}))".into(),
            display_name_attr: "displayName".into(),
            mail_attr: "mail".into(),
            group_attr: "memberOf".into(),
            nested_groups: false,
            group_base: String::new(),
            group_roles: BTreeMap::new(),
            default_role: None,
            timeout_secs: 10,
        }
    }
}

impl AuthConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.session_idle_secs < 60 || self.session_max_secs < self.session_idle_secs {
            return bad(format!(
                "auth.session_idle_secs ({}) must be at least 60 and no more than auth.session_max_secs ({})",
                self.session_idle_secs, self.session_max_secs
            ));
        }
        if self.max_failed_logins < 1 || self.login_window_secs < 1 {
            return bad(
                "auth.max_failed_logins and auth.login_window_secs must be at least 1".into(),
            );
        }
        for d in &self.notify_domains {
            if d.is_empty() || d.contains('@') || d.starts_with('.') {
                return bad(format!(
                    "auth.notify_domains: {d:?} is not a domain (write example.com)"
                ));
            }
        }
        if self.backend == AuthBackendKind::Ldap {
            let l = &self.ldap;
            if !(l.url.starts_with("ldap://") || l.url.starts_with("ldaps://")) {
                return bad(format!(
                    "auth.ldap.url = {:?} must start with ldap:// or ldaps://",
                    l.url
                ));
            }
            if l.url.starts_with("ldaps://") != (l.tls == LdapTls::Ldaps) {
                return bad(
                    "auth.ldap.tls = \"ldaps\" goes with an ldaps:// URL, and only with it".into(),
                );
            }
            if l.user_base.is_empty() {
                return bad("auth.ldap.user_base is required (where users are searched)".into());
            }
            if !l.user_filter.contains("{username}") {
                return bad(format!(
                    "auth.ldap.user_filter = {:?} must contain {{username}}",
                    l.user_filter
                ));
            }
            if l.group_roles.is_empty() && l.default_role.is_none() {
                return bad(
                    "auth.ldap.group_roles is empty and there is no default_role: nobody could log in"
                        .into(),
                );
            }
            if l.timeout_secs == 0 {
                return bad("auth.ldap.timeout_secs must be at least 1".into());
            }
        }
        Ok(())
    }
}
