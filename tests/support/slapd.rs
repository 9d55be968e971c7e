//! A throwaway OpenLDAP slapd on 127.0.0.1 (plain/StartTLS and LDAPS ports)
//! with its own config, database and certificate in a temp dir, loaded with
//! a small directory of people and groups. Killed on drop.
//!
//! Traps met on the way (Debian's slapd 2.5):
//! - `memberOf` is kept by the memberof overlay only for changes made over
//!   LDAP: `slapadd` bypasses overlays, so the fixture goes in with `ldapadd`,
//!   and a group after its members.
//! - OpenLDAP refuses an unauthenticated bind (a DN with an empty password)
//!   unless `allow bind_anon_dn`; Active Directory accepts it. It is allowed
//!   here so the tests can show why the backend refuses empty passwords.
//! - The default ACL lets anyone read `userPassword`; the config hides it.
//! - rustls checks the certificate against the URL's host, `127.0.0.1`, so
//!   the certificate needs that IP address as a subject alternative name.
//! - The ldap-utils read `~/.ldaprc` and `/etc/ldap/ldap.conf` (a TLS_CACERT
//!   there breaks nothing here, but a URI or BASE could): `LDAPNOINIT=1`.
//! - As root, slapd without `-u`/`-g` simply stays root, which is fine for a
//!   temp dir. A distribution AppArmor profile for slapd (Ubuntu ships one)
//!   would confine it to /var/lib/ldap and /etc/ldap; Debian 12 has none.
//! - The package's postinst would start a system slapd: see `deps_slapd` in
//!   scripts/install-test-deps.sh.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmscan::config::{LdapConfig, LdapTls};
use vmscan::domain::Role;

use super::sshd::free_port;

const SLAPD: &str = "/usr/sbin/slapd";
const LDAPADD: &str = "/usr/bin/ldapadd";

pub const SUFFIX: &str = "dc=example,dc=com";
pub const ROOT_DN: &str = "cn=admin,dc=example,dc=com";
pub const ROOT_PW: &str = "root-secret";
/// The service account vmscan searches with.
pub const SERVICE_DN: &str = "cn=svc-vmscan,ou=service,dc=example,dc=com";
pub const SERVICE_PW: &str = "svc-secret";
pub const PEOPLE: &str = "ou=people,dc=example,dc=com";
pub const GROUPS: &str = "ou=groups,dc=example,dc=com";
pub const SCAN_ADMINS: &str = "cn=scan-admins,ou=groups,dc=example,dc=com";
pub const SAM_TEAM: &str = "cn=sam-team,ou=groups,dc=example,dc=com";
pub const OTHER: &str = "cn=other,ou=groups,dc=example,dc=com";
/// A group inside `SAM_TEAM`; `erin` is in it (and so in sam-team, for AD).
pub const NESTED: &str = "cn=nested,ou=groups,dc=example,dc=com";
/// `dave` is disabled: this filter leaves him out.
pub const USER_FILTER: &str =
    "(&(objectClass=inetOrgPerson)(uid={username})(!(employeeType=disabled)))";

/// The fixture's people: alice (scan-admins, sam-team), bob (sam-team),
/// carol (other), dave (disabled, sam-team), erin (nested). Each one's
/// password is `<name>-pw` ([`password`]), mail `<name>@example.com`,
/// displayName `<Name> Example`.
pub const USERS: [&str; 5] = ["alice", "bob", "carol", "dave", "erin"];

pub fn password(user: &str) -> String {
    format!("{user}-pw")
}

pub fn user_dn(user: &str) -> String {
    format!("uid={user},{PEOPLE}")
}

pub struct Slapd {
    /// `ldap://127.0.0.1:PORT` (plain, or StartTLS).
    pub url: String,
    /// `ldaps://127.0.0.1:PORT`.
    pub ldaps_url: String,
    /// The server's self-signed certificate: its own CA bundle.
    pub ca_pem: PathBuf,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Slapd {
    /// Whether slapd and ldapadd are here. Missing: a note and `false`, but
    /// under CI a panic (the tests must not pass by skipping there).
    pub fn installed() -> bool {
        if Path::new(SLAPD).exists() && Path::new(LDAPADD).exists() {
            return true;
        }
        let msg = format!(
            "{SLAPD} or {LDAPADD} is missing: run scripts/install-test-deps.sh (installs slapd, ldap-utils)"
        );
        if std::env::var("CI").is_ok() {
            panic!("{msg}");
        }
        eprintln!("note: LDAP tests skipped: {msg}");
        false
    }

    /// A running slapd with the fixture loaded.
    pub fn new() -> Slapd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("db")).unwrap();
        let (cert, key) = super::tls::self_signed();
        let ca_pem = d.join("cert.pem");
        std::fs::write(&ca_pem, cert).unwrap();
        std::fs::write(d.join("key.pem"), key).unwrap();
        std::fs::write(d.join("slapd.conf"), slapd_conf(d)).unwrap();
        let mut s = Slapd {
            url: format!("ldap://127.0.0.1:{}", free_port()),
            ldaps_url: format!("ldaps://127.0.0.1:{}", free_port()),
            ca_pem,
            dir,
            child: None,
        };
        s.start();
        s.ldapadd(&fixture());
        s
    }

    /// Starts slapd again after [`stop`](Self::stop): same ports, same entries.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "slapd is already running");
        let d = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("slapd.log"))
            .unwrap();
        // `-d stats` keeps slapd in the foreground (so it is our child to
        // kill) and logs connections, binds and searches to the log file.
        let child = Command::new(SLAPD)
            .args(["-d", "stats", "-f"])
            .arg(d.join("slapd.conf"))
            .arg("-h")
            .arg(format!("{}/ {}/", self.url, self.ldaps_url))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_listening();
    }

    /// Stops slapd (SIGTERM, so the database is closed cleanly).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let until = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > until {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.wait();
    }

    fn wait_listening(&mut self) {
        let until = Instant::now() + Duration::from_secs(15);
        let ports = [port_of(&self.url), port_of(&self.ldaps_url)];
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("slapd exited with {st}: {}", self.log());
            }
            if ports
                .iter()
                .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok())
            {
                return;
            }
            assert!(
                Instant::now() < until,
                "slapd did not listen: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Adds entries (LDIF) as the root DN, over LDAP so overlays see them.
    pub fn ldapadd(&self, ldif: &str) {
        let path = self.dir.path().join("add.ldif");
        std::fs::write(&path, ldif).unwrap();
        let out = Command::new(LDAPADD)
            .env("LDAPNOINIT", "1")
            .args(["-x", "-H", &self.url, "-D", ROOT_DN, "-w", ROOT_PW, "-f"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ldapadd failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("slapd.log")).unwrap_or_default()
    }

    /// A config for this directory over plain LDAP: the service account,
    /// `USER_FILTER`, scan-admins → admin, sam-team → requester, no default
    /// role, a 5 s timeout.
    pub fn config(&self) -> LdapConfig {
        LdapConfig {
            url: self.url.clone(),
            tls: LdapTls::None,
            ca_bundle: None,
            verify_tls: true,
            bind_dn: SERVICE_DN.into(),
            bind_password: Some(SERVICE_PW.into()),
            user_base: PEOPLE.into(),
            user_filter: USER_FILTER.into(),
            group_base: GROUPS.into(),
            group_roles: [
                (SCAN_ADMINS.to_string(), Role::Admin),
                (SAM_TEAM.to_string(), Role::Requester),
            ]
            .into(),
            timeout_secs: 5,
            ..LdapConfig::default()
        }
    }

    /// [`config`](Self::config) over StartTLS or LDAPS, trusting `ca_pem`.
    pub fn tls_config(&self, tls: LdapTls) -> LdapConfig {
        let mut c = self.config();
        c.tls = tls;
        c.ca_bundle = Some(self.ca_pem.clone());
        if tls == LdapTls::Ldaps {
            c.url = self.ldaps_url.clone();
        }
        c
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

fn slapd_conf(d: &Path) -> String {
    let d = d.display();
    format!(
        "include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/nis.schema
include /etc/ldap/schema/inetorgperson.schema
pidfile {d}/slapd.pid
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
TLSCertificateFile {d}/cert.pem
TLSCertificateKeyFile {d}/key.pem
allow bind_anon_dn

database mdb
suffix \"{SUFFIX}\"
rootdn \"{ROOT_DN}\"
rootpw {ROOT_PW}
directory {d}/db
maxsize 10485760
overlay memberof
access to attrs=userPassword by anonymous auth by * none
access to * by * read
"
    )
}

/// The directory: people, groups (each after its members) and the service account.
fn fixture() -> String {
    let mut l = format!(
        "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\n\
         dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: {GROUPS}\nobjectClass: organizationalUnit\nou: groups\n\n\
         dn: ou=service,{SUFFIX}\nobjectClass: organizationalUnit\nou: service\n\n\
         dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n\
         cn: svc-vmscan\nuserPassword: {SERVICE_PW}\n\n"
    );
    for u in USERS {
        let name = format!("{}{}", u[..1].to_uppercase(), &u[1..]);
        l.push_str(&format!(
            "dn: {dn}\nobjectClass: inetOrgPerson\nuid: {u}\ncn: {name} Example\nsn: Example\n\
             displayName: {name} Example\nmail: {u}@example.com\nuserPassword: {pw}\n",
            dn = user_dn(u),
            pw = password(u),
        ));
        if u == "dave" {
            l.push_str("employeeType: disabled\n");
        }
        l.push('\n');
    }
    let groups = [
        (SCAN_ADMINS, vec![user_dn("alice")]),
        (NESTED, vec![user_dn("erin")]),
        (
            SAM_TEAM,
            vec![
                user_dn("alice"),
                user_dn("bob"),
                user_dn("dave"),
                NESTED.into(),
            ],
        ),
        (OTHER, vec![user_dn("carol")]),
    ];
    for (dn, members) in groups {
        let cn = dn.split(',').next().unwrap().trim_start_matches("cn=");
        l.push_str(&format!("dn: {dn}\nobjectClass: groupOfNames\ncn: {cn}\n"));
        for m in members {
            l.push_str(&format!("member: {m}\n"));
        }
        l.push('\n');
    }
    l
}
