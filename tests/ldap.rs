//! The LDAP login backend against a real OpenLDAP slapd: each test starts
//! its own on 127.0.0.1 (tests/support/slapd.rs) with alice, bob, carol,
//! dave (disabled) and erin, and their groups.

use std::time::{Duration, Instant};

use secrecy::SecretString;
use vmscan::config::{LdapConfig, LdapTls};
use vmscan::domain::Role;
use vmscan::identity::ldap::user_filter;
use vmscan::identity::{Account, LdapBackend, LoginBackend, LoginError};

mod support;
use support::slapd::{self, password, Slapd};

/// A directory, or `None` (with a note) where slapd is not installed.
fn directory() -> Option<Slapd> {
    Slapd::installed().then(Slapd::new)
}

async fn login(cfg: &LdapConfig, user: &str, pw: &str) -> Result<Account, LoginError> {
    let backend = LdapBackend::new(cfg).expect("backend");
    assert_eq!(backend.kind(), "ldap");
    backend
        .authenticate(user, &SecretString::from(pw.to_string()))
        .await
}

fn bad_credentials(r: Result<Account, LoginError>) -> String {
    match r {
        Err(LoginError::BadCredentials { reason }) => reason,
        other => panic!("expected BadCredentials, got {other:?}"),
    }
}

#[tokio::test]
async fn alice_logs_in_as_admin_and_bob_as_requester() {
    let Some(d) = directory() else { return };
    let cfg = d.config();
    let alice = login(&cfg, "alice", &password("alice")).await.unwrap();
    assert_eq!(alice.role, Role::Admin);
    assert_eq!(alice.username, "alice");
    assert_eq!(alice.display_name.as_deref(), Some("Alice Example"));
    assert_eq!(alice.email.as_deref(), Some("alice@example.com"));
    assert_eq!(alice.source, "ldap");
    let mut groups = alice.groups.clone();
    groups.sort();
    assert_eq!(groups, vec![slapd::SAM_TEAM, slapd::SCAN_ADMINS]);

    let bob = login(&cfg, "bob", &password("bob")).await.unwrap();
    assert_eq!(bob.role, Role::Requester);
    assert_eq!(bob.groups, vec![slapd::SAM_TEAM]);
}

#[tokio::test]
async fn group_roles_match_dns_whatever_their_case_and_spacing() {
    let Some(d) = directory() else { return };
    let mut cfg = d.config();
    cfg.group_roles = [(
        "CN=Scan-Admins, OU=Groups, DC=Example, DC=com".to_string(),
        Role::Operator,
    )]
    .into();
    let alice = login(&cfg, "alice", &password("alice")).await.unwrap();
    assert_eq!(alice.role, Role::Operator);
}

#[tokio::test]
async fn a_wrong_password_is_refused() {
    let Some(d) = directory() else { return };
    let reason = bad_credentials(login(&d.config(), "alice", "bob-pw").await);
    assert!(reason.contains("uid=alice"), "{reason}");
}

#[tokio::test]
async fn an_empty_password_is_refused_though_the_directory_would_accept_it() {
    let Some(d) = directory() else { return };
    // The directory takes a DN with no password as an (anonymous) success...
    let (conn, mut ldap) = ldap3::LdapConnAsync::new(&d.url).await.unwrap();
    ldap3::drive!(conn);
    let res = ldap
        .simple_bind(&slapd::user_dn("alice"), "")
        .await
        .unwrap();
    assert_eq!(res.rc, 0, "slapd accepts the unauthenticated bind: {res}");
    let _ = ldap.unbind().await;
    // ...so the backend must never send one.
    let reason = bad_credentials(login(&d.config(), "alice", "").await);
    assert!(reason.contains("empty password"), "{reason}");
}

#[tokio::test]
async fn unknown_users_and_filter_injection_are_refused() {
    let Some(d) = directory() else { return };
    let cfg = d.config();
    let reason = bad_credentials(login(&cfg, "mallory", "x").await);
    assert!(reason.contains("no such user"), "{reason}");
    // Names that would widen the filter are refused as names...
    for name in ["*", ")(uid=*", "alice)(uid=*"] {
        bad_credentials(login(&cfg, name, &password("alice")).await);
    }
    // ...and escaped all the same: the real directory finds no one for
    // the filters they render to, where the raw text would find everyone.
    let (conn, ldap) = ldap3::LdapConnAsync::new(&d.url).await.unwrap();
    ldap3::drive!(conn);
    let count = |filter: String| {
        let mut ldap = ldap.clone();
        async move {
            let (entries, _) = ldap
                .search(slapd::PEOPLE, ldap3::Scope::Subtree, &filter, vec!["1.1"])
                .await
                .unwrap()
                .success()
                .unwrap_or_else(|e| panic!("{filter}: {e}"));
            entries.len()
        }
    };
    let template = "(&(objectClass=inetOrgPerson)(uid={username}))";
    assert_eq!(count(template.replace("{username}", "*")).await, 5);
    for name in ["*", "*)(uid=*"] {
        assert_eq!(count(user_filter(template, name)).await, 0, "{name}");
    }
}

#[tokio::test]
async fn carol_in_no_mapped_group_gets_no_role_or_the_default_one() {
    let Some(d) = directory() else { return };
    let mut cfg = d.config();
    match login(&cfg, "carol", &password("carol")).await {
        Err(LoginError::NoRole { username, groups }) => {
            assert_eq!(username, "carol");
            assert!(groups.contains(slapd::OTHER), "{groups}");
        }
        other => panic!("expected NoRole, got {other:?}"),
    }
    cfg.default_role = Some(Role::Viewer);
    let carol = login(&cfg, "carol", &password("carol")).await.unwrap();
    assert_eq!(carol.role, Role::Viewer);
}

#[tokio::test]
async fn dave_is_disabled_and_cannot_log_in() {
    let Some(d) = directory() else { return };
    let reason = bad_credentials(login(&d.config(), "dave", &password("dave")).await);
    assert!(reason.contains("no such user"), "{reason}");
}

#[tokio::test]
async fn a_filter_matching_two_people_is_a_directory_error() {
    let Some(d) = directory() else { return };
    let mut cfg = d.config();
    cfg.user_filter = "(|(uid={username})(uid=bob))".into();
    match login(&cfg, "alice", &password("alice")).await {
        Err(LoginError::Directory(m)) => assert!(m.contains("matches 2 entries"), "{m}"),
        other => panic!("expected Directory, got {other:?}"),
    }
}

#[tokio::test]
async fn logs_in_over_starttls_with_the_ca_bundle() {
    let Some(d) = directory() else { return };
    let alice = login(
        &d.tls_config(LdapTls::Starttls),
        "alice",
        &password("alice"),
    )
    .await
    .unwrap();
    assert_eq!(alice.role, Role::Admin);
    assert!(
        d.log().contains("EXT oid=1.3.6.1.4.1.1466.20037"),
        "no StartTLS in the log"
    );
}

#[tokio::test]
async fn logs_in_over_ldaps_with_the_ca_bundle() {
    let Some(d) = directory() else { return };
    let bob = login(&d.tls_config(LdapTls::Ldaps), "bob", &password("bob"))
        .await
        .unwrap();
    assert_eq!(bob.role, Role::Requester);
}

#[tokio::test]
async fn an_untrusted_certificate_makes_the_directory_unreachable() {
    let Some(d) = directory() else { return };
    let other_ca = d.dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, support::tls::self_signed().0).unwrap();
    for tls in [LdapTls::Starttls, LdapTls::Ldaps] {
        let mut cfg = d.tls_config(tls);
        cfg.ca_bundle = Some(other_ca.clone());
        match login(&cfg, "alice", &password("alice")).await {
            Err(LoginError::Unreachable(m)) => {
                assert!(
                    m.contains("TLS") && m.contains("certificate"),
                    "{tls:?}: {m}"
                );
                assert!(m.contains("ca_bundle"), "{tls:?}: no hint in {m}");
            }
            other => panic!("{tls:?}: expected Unreachable, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn verify_tls_false_accepts_the_self_signed_certificate() {
    let Some(d) = directory() else { return };
    for tls in [LdapTls::Starttls, LdapTls::Ldaps] {
        let mut cfg = d.tls_config(tls);
        cfg.ca_bundle = None;
        cfg.verify_tls = false;
        let alice = login(&cfg, "alice", &password("alice")).await.unwrap();
        assert_eq!(alice.role, Role::Admin, "{tls:?}");
    }
}

#[tokio::test]
async fn a_refused_service_account_is_a_directory_error() {
    let Some(d) = directory() else { return };
    let mut cfg = d.config();
    cfg.bind_password = Some("wrong".into());
    match login(&cfg, "alice", &password("alice")).await {
        Err(LoginError::Directory(m)) => {
            assert!(
                m.contains("the service account") && m.contains("refused"),
                "{m}"
            );
            assert!(m.contains(slapd::SERVICE_DN), "{m}");
        }
        other => panic!("expected Directory, got {other:?}"),
    }
    // A DN without a password would be an unauthenticated bind: refused too.
    cfg.bind_password = None;
    assert!(matches!(
        login(&cfg, "alice", &password("alice")).await,
        Err(LoginError::Directory(_))
    ));
}

#[tokio::test]
async fn searches_anonymously_without_a_service_account() {
    let Some(d) = directory() else { return };
    let mut cfg = d.config();
    cfg.bind_dn = String::new();
    cfg.bind_password = None;
    let alice = login(&cfg, "alice", &password("alice")).await.unwrap();
    assert_eq!(alice.role, Role::Admin);
}

/// OpenLDAP does not know AD's in-chain matching rule (the filter's exact
/// text is unit-tested in src/identity/ldap.rs): the extra search finds
/// nothing there and breaks nothing, and erin gets only her direct group.
#[tokio::test]
async fn nested_groups_search_is_harmless_where_the_rule_is_unknown() {
    let Some(d) = directory() else { return };
    let mut cfg = d.config();
    cfg.nested_groups = true;
    let alice = login(&cfg, "alice", &password("alice")).await.unwrap();
    assert_eq!(alice.role, Role::Admin);
    assert!(
        d.log().contains("filter=\"(?=undefined)\""),
        "no in-chain search sent"
    );
    match login(&cfg, "erin", &password("erin")).await {
        Err(LoginError::NoRole { groups, .. }) => assert_eq!(groups, slapd::NESTED),
        other => panic!("expected NoRole, got {other:?}"),
    }
}

#[tokio::test]
async fn a_stopped_directory_is_unreachable_until_it_starts_again() {
    let Some(mut d) = directory() else { return };
    let cfg = d.config();
    login(&cfg, "alice", &password("alice")).await.unwrap();
    d.stop();
    let started = Instant::now();
    match login(&cfg, "alice", &password("alice")).await {
        Err(LoginError::Unreachable(m)) => assert!(m.contains(&d.url), "{m}"),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(cfg.timeout_secs));
    d.start();
    let alice = login(&cfg, "alice", &password("alice")).await.unwrap();
    assert_eq!(alice.role, Role::Admin);
}

/// A server that accepts connections and never answers (no slapd needed).
#[tokio::test]
async fn a_silent_server_is_unreachable_after_the_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            open.push(s);
        }
    });
    for tls in [LdapTls::None, LdapTls::Starttls] {
        let cfg = LdapConfig {
            url: format!("ldap://{addr}"),
            tls,
            user_base: slapd::PEOPLE.into(),
            default_role: Some(Role::Viewer),
            timeout_secs: 1,
            // An anonymous search: the first request that waits is the search.
            ..LdapConfig::default()
        };
        let started = Instant::now();
        match login(&cfg, "alice", "pw").await {
            Err(LoginError::Unreachable(m)) => {
                assert!(m.contains("did not answer within 1 s"), "{tls:?}: {m}")
            }
            other => panic!("{tls:?}: expected Unreachable, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(3), "{tls:?}");
    }
    hold.abort();
}
