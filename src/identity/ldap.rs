//! The LDAP / Active Directory login backend: a service account finds the
//! user, a bind as the user checks the password, the user's groups give the role.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, Scope, SearchEntry};
use secrecy::{ExposeSecret, SecretString};

use super::{check_username, Account, LoginBackend, LoginError};
use crate::config::{LdapConfig, LdapTls};
use crate::domain::Role;

/// AD's LDAP_MATCHING_RULE_IN_CHAIN: `member` followed through nested groups.
const IN_CHAIN: &str = "1.2.840.113556.1.4.1941";
/// Result code of a bind with a wrong DN or password.
const INVALID_CREDENTIALS: u32 = 49;

pub struct LdapBackend {
    cfg: LdapConfig,
    /// `None` for plain LDAP.
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
}

impl LdapBackend {
    /// Reads the CA bundle now, so that a bad one is reported at startup.
    pub fn new(cfg: &LdapConfig) -> Result<LdapBackend, LoginError> {
        let wants_tls = cfg.tls != LdapTls::None || cfg.url.starts_with("ldaps://");
        Ok(LdapBackend {
            tls: if wants_tls {
                Some(tls_config(cfg)?)
            } else {
                None
            },
            timeout: Duration::from_secs(cfg.timeout_secs.max(1)),
            cfg: cfg.clone(),
        })
    }

    /// A new connection, TLS set up as configured (connect, StartTLS and
    /// handshake together under the timeout).
    async fn connect(&self) -> Result<Ldap, LoginError> {
        let url = &self.cfg.url;
        let mut settings = LdapConnSettings::new().set_conn_timeout(self.timeout);
        if let Some(tls) = &self.tls {
            settings = settings
                .set_config(tls.clone())
                .set_starttls(self.cfg.tls == LdapTls::Starttls);
        }
        let (conn, ldap) = LdapConnAsync::with_settings(settings, url)
            .await
            .map_err(|e| LoginError::Unreachable(self.connect_failure(e)))?;
        ldap3::drive!(conn);
        Ok(ldap)
    }

    fn connect_failure(&self, e: LdapError) -> String {
        let url = &self.cfg.url;
        match &e {
            LdapError::Timeout { .. } => {
                format!("{url} did not answer within {} s", self.timeout.as_secs())
            }
            LdapError::Io { source } => match source
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                Some(tls @ rustls::Error::InvalidCertificate(_)) => format!(
                    "TLS with {url} failed: {tls} (set ca_bundle to the CA that signed it, or verify_tls = false)"
                ),
                Some(tls) => format!("TLS with {url} failed: {tls}"),
                None if source.kind() == std::io::ErrorKind::ConnectionRefused => {
                    format!("{url} refused the connection (is the directory running?)")
                }
                None => format!("cannot connect to {url}: {source}"),
            },
            LdapError::LdapResult { result } if self.cfg.tls == LdapTls::Starttls => {
                format!("{url} refused StartTLS: {result}")
            }
            _ => format!("cannot connect to {url}: {e}"),
        }
    }

    /// The service account's bind; both `bind_dn` and password empty: stay anonymous.
    async fn bind_service(&self, ldap: &mut Ldap) -> Result<(), LoginError> {
        let dn = &self.cfg.bind_dn;
        let pw = self
            .cfg
            .bind_password
            .as_ref()
            .map(|p| p.expose_secret())
            .unwrap_or("");
        match (dn.is_empty(), pw.is_empty()) {
            (true, true) => return Ok(()),
            // A DN without a password is an unauthenticated bind: it would
            // "succeed" and search anonymously.
            (false, true) => {
                return Err(LoginError::Directory(format!(
                    "the service account {dn} has no bind_password (set VMSCAN_AUTH__LDAP__BIND_PASSWORD)"
                )))
            }
            _ => {}
        }
        let res = self.op(ldap.with_timeout(self.timeout).simple_bind(dn, pw).await)?;
        if res.rc != 0 {
            return Err(LoginError::Directory(format!(
                "the service account {dn} was refused: {res}"
            )));
        }
        Ok(())
    }

    /// The one entry `user_filter` finds for `username`.
    async fn find_user(&self, ldap: &mut Ldap, username: &str) -> Result<SearchEntry, LoginError> {
        let filter = user_filter(&self.cfg.user_filter, username);
        let attrs: Vec<&str> = [
            &self.cfg.display_name_attr,
            &self.cfg.mail_attr,
            &self.cfg.group_attr,
        ]
        .into_iter()
        .map(String::as_str)
        .filter(|a| !a.is_empty())
        .collect();
        let mut entries = self
            .search(ldap, &self.cfg.user_base, &filter, attrs)
            .await?;
        match entries.len() {
            0 => Err(LoginError::BadCredentials {
                reason: "no such user (or filtered out, e.g. disabled)".into(),
            }),
            1 => Ok(entries.remove(0)),
            n => Err(LoginError::Directory(format!(
                "user_filter {filter} under {} matches {n} entries; it must match one",
                self.cfg.user_base
            ))),
        }
    }

    /// Checks the password by binding as the user on a connection of its own,
    /// so the service connection never takes the user's rights.
    async fn bind_user(&self, dn: &str, password: &str) -> Result<(), LoginError> {
        let mut ldap = self.connect().await?;
        let res = self.op(ldap
            .with_timeout(self.timeout)
            .simple_bind(dn, password)
            .await);
        let _ = ldap.unbind().await;
        match res? {
            r if r.rc == 0 => Ok(()),
            r if r.rc == INVALID_CREDENTIALS => Err(LoginError::BadCredentials {
                // AD puts the real reason (52e wrong password, 533 disabled,
                // 775 locked…) in the text: keep it for the audit trail.
                reason: match r.text.trim() {
                    "" => format!("the directory refused the password of {dn}"),
                    text => format!("the directory refused the password of {dn}: {text}"),
                },
            }),
            r => Err(LoginError::Directory(format!("binding as {dn}: {r}"))),
        }
    }

    /// Groups that contain `dn` through other groups (AD only).
    async fn nested_groups(&self, ldap: &mut Ldap, dn: &str) -> Result<Vec<String>, LoginError> {
        let base = if self.cfg.group_base.is_empty() {
            &self.cfg.user_base
        } else {
            &self.cfg.group_base
        };
        let entries = self
            .search(ldap, base, &in_chain_filter(dn), vec!["1.1"])
            .await?;
        Ok(entries.into_iter().map(|e| e.dn).collect())
    }

    async fn search(
        &self,
        ldap: &mut Ldap,
        base: &str,
        filter: &str,
        attrs: Vec<&str>,
    ) -> Result<Vec<SearchEntry>, LoginError> {
        let res = ldap
            .with_timeout(self.timeout)
            .search(base, Scope::Subtree, filter, attrs)
            .await;
        let res = match res {
            Err(LdapError::FilterParsing) => {
                return Err(LoginError::Directory(format!(
                    "{filter} is not a valid LDAP filter"
                )))
            }
            other => self.op(other)?,
        };
        if res.1.rc != 0 {
            return Err(LoginError::Directory(format!(
                "searching {base} for {filter}: {}",
                res.1
            )));
        }
        // AD answers searches at a domain root with referrals to its other
        // partitions as well: they are not entries.
        Ok(res
            .0
            .into_iter()
            .filter(|e| !e.is_ref() && !e.is_intermediate())
            .map(SearchEntry::construct)
            .collect())
    }

    /// An operation's transport failure: the directory stopped answering.
    fn op<T>(&self, r: Result<T, LdapError>) -> Result<T, LoginError> {
        r.map_err(|e| match e {
            LdapError::Timeout { .. } => LoginError::Unreachable(format!(
                "{} did not answer within {} s",
                self.cfg.url,
                self.timeout.as_secs()
            )),
            e => LoginError::Unreachable(format!("{}: {e}", self.cfg.url)),
        })
    }

    async fn login(
        &self,
        svc: &mut Ldap,
        username: &str,
        password: &str,
    ) -> Result<Account, LoginError> {
        self.bind_service(svc).await?;
        let entry = self.find_user(svc, username).await?;
        self.bind_user(&entry.dn, password).await?;

        let mut groups = attr(&entry, &self.cfg.group_attr);
        if self.cfg.nested_groups {
            groups.extend(self.nested_groups(svc, &entry.dn).await?);
        }
        let groups = dedup_dns(groups);
        let role = role_for(&groups, &self.cfg.group_roles)
            .or(self.cfg.default_role)
            .ok_or_else(|| LoginError::NoRole {
                username: username.to_string(),
                groups: if groups.is_empty() {
                    "none".into()
                } else {
                    groups.join("; ")
                },
            })?;
        Ok(Account {
            // Directory names are case-insensitive (sAMAccountName, uid): one
            // person is one vmscan user whatever case they typed.
            username: username.to_lowercase(),
            display_name: attr(&entry, &self.cfg.display_name_attr).into_iter().next(),
            email: attr(&entry, &self.cfg.mail_attr).into_iter().next(),
            role,
            groups,
            source: "ldap",
        })
    }
}

#[async_trait]
impl LoginBackend for LdapBackend {
    fn kind(&self) -> &'static str {
        "ldap"
    }

    async fn authenticate(
        &self,
        username: &str,
        password: &SecretString,
    ) -> Result<Account, LoginError> {
        let password = password.expose_secret();
        // A simple bind with an empty password is an unauthenticated bind,
        // which directories accept: it would log anyone in.
        if password.is_empty() {
            return Err(LoginError::BadCredentials {
                reason: "empty password (an LDAP bind without one is anonymous)".into(),
            });
        }
        check_username(username).map_err(|reason| LoginError::BadCredentials { reason })?;
        let mut svc = self.connect().await?;
        let result = self.login(&mut svc, username, password).await;
        let _ = svc.unbind().await;
        result
    }
}

/// `user_filter` with `{username}` replaced by the escaped name, so that
/// `*`, `(` or `)` in a name match only themselves.
pub fn user_filter(template: &str, username: &str) -> String {
    template.replace("{username}", &ldap3::ldap_escape(username))
}

/// The groups containing `dn`, directly or through other groups (AD).
pub fn in_chain_filter(dn: &str) -> String {
    format!("(member:{IN_CHAIN}:={})", ldap3::ldap_escape(dn))
}

/// A DN as compared: case-insensitive, spaces after commas ignored.
pub fn normalize_dn(dn: &str) -> String {
    let mut out = String::with_capacity(dn.len());
    let mut after_comma = false;
    for c in dn.trim().chars() {
        if after_comma && c == ' ' {
            continue;
        }
        after_comma = c == ',';
        out.extend(c.to_lowercase());
    }
    out
}

/// The highest role `group_roles` gives any of `groups`.
pub fn role_for(groups: &[String], group_roles: &BTreeMap<String, Role>) -> Option<Role> {
    let groups: Vec<String> = groups.iter().map(|g| normalize_dn(g)).collect();
    group_roles
        .iter()
        .filter(|(dn, _)| groups.contains(&normalize_dn(dn)))
        .map(|(_, role)| *role)
        .max()
}

fn dedup_dns(dns: Vec<String>) -> Vec<String> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for dn in dns {
        let n = normalize_dn(&dn);
        if !seen.contains(&n) {
            seen.push(n);
            out.push(dn);
        }
    }
    out
}

/// The values of `name` (attribute names are case-insensitive; servers
/// answer with the schema's spelling).
fn attr(entry: &SearchEntry, name: &str) -> Vec<String> {
    entry
        .attrs
        .iter()
        .find(|(k, _)| !name.is_empty() && k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

fn tls_config(cfg: &LdapConfig) -> Result<Arc<rustls::ClientConfig>, LoginError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| LoginError::Directory(format!("TLS: {e}")))?;
    let config = if !cfg.verify_tls {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::tls::AnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let roots = match &cfg.ca_bundle {
            Some(path) => ca_roots(path)?,
            None => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                roots
            }
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

fn ca_roots(path: &std::path::Path) -> Result<rustls::RootCertStore, LoginError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let bad = |why: String| LoginError::Directory(format!("ca_bundle {}: {why}", path.display()));
    let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| bad(format!("not a PEM file: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("a certificate in it cannot be used: {e}")))?;
    }
    if roots.is_empty() {
        // Otherwise every login fails later with "unknown issuer".
        return Err(bad(
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_cannot_widen_the_filter() {
        let t = "(&(objectClass=inetOrgPerson)(uid={username}))";
        assert_eq!(
            user_filter(t, "alice"),
            "(&(objectClass=inetOrgPerson)(uid=alice))"
        );
        assert_eq!(
            user_filter(t, "*"),
            "(&(objectClass=inetOrgPerson)(uid=\\2a))"
        );
        assert_eq!(
            user_filter(t, ")(uid=*"),
            "(&(objectClass=inetOrgPerson)(uid=\\29\\28uid=\\2a))"
        );
        assert_eq!(user_filter("(uid={username})", "a\\b"), "(uid=a\\5cb)");
    }

    #[test]
    fn the_nested_group_filter_uses_the_in_chain_rule() {
        assert_eq!(
            in_chain_filter("CN=Bob (ext),OU=People,DC=example,DC=com"),
            "(member:1.2.840.113556.1.4.1941:=CN=Bob \\28ext\\29,OU=People,DC=example,DC=com)"
        );
    }

    #[test]
    fn dns_compare_without_case_or_spaces_after_commas() {
        assert_eq!(
            normalize_dn(" CN=Scan Admins, OU=Groups,  DC=Example,DC=com "),
            "cn=scan admins,ou=groups,dc=example,dc=com"
        );
    }

    fn roles(pairs: &[(&str, Role)]) -> BTreeMap<String, Role> {
        pairs.iter().map(|(d, r)| (d.to_string(), *r)).collect()
    }

    #[test]
    fn the_highest_mapped_role_wins() {
        let map = roles(&[
            ("cn=sam-team,ou=groups,dc=example,dc=com", Role::Requester),
            ("CN=Scan-Admins, OU=Groups, DC=example, DC=com", Role::Admin),
        ]);
        let alice = vec![
            "cn=sam-team,ou=groups,dc=example,dc=com".to_string(),
            "cn=scan-admins,ou=groups,dc=example,dc=com".to_string(),
        ];
        assert_eq!(role_for(&alice, &map), Some(Role::Admin));
        let bob = vec!["CN=sam-team,OU=groups,DC=example,DC=com".to_string()];
        assert_eq!(role_for(&bob, &map), Some(Role::Requester));
        let carol = vec!["cn=other,ou=groups,dc=example,dc=com".to_string()];
        assert_eq!(role_for(&carol, &map), None);
        assert_eq!(role_for(&[], &map), None);
    }

    #[test]
    fn groups_found_twice_are_listed_once() {
        let dns = vec![
            "CN=A,DC=x".to_string(),
            "cn=a, dc=x".to_string(),
            "cn=b,dc=x".to_string(),
        ];
        assert_eq!(dedup_dns(dns), vec!["CN=A,DC=x", "cn=b,dc=x"]);
    }

    #[test]
    fn a_bundle_that_is_not_pem_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let cfg = LdapConfig {
            url: "ldap://127.0.0.1:1".into(),
            ca_bundle: Some(path.clone()),
            ..LdapConfig::default()
        };
        let e = LdapBackend::new(&cfg).err().expect("refused");
        assert!(
            matches!(&e, LoginError::Directory(m) if m.contains(&path.display().to_string())),
            "{e}"
        );
        let missing = LdapConfig {
            ca_bundle: Some(dir.path().join("missing.pem")),
            ..cfg
        };
        let e = LdapBackend::new(&missing).err().expect("refused");
        assert!(e.to_string().contains("missing.pem"), "{e}");
    }
}
