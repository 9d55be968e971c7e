//! Windows templates: the WinRM client against a fake Windows guest that
//! speaks WS-Management (Basic, NTLM with sealing, HTTPS), and the Windows
//! agent profile end to end through the app.

#[path = "support/winrm.rs"]
mod fake_winrm;
mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use vmscan::remote::winrm::{
    powershell_command, ps_quote, WinRmAuth, WinRmOptions, WinRmScheme, WinRmShell,
};
use vmscan::remote::{RemoteError, RemoteShell, Stream};

use fake_winrm::{FakeConfig, FakeWinRm};

const T: Duration = Duration::from_secs(20);

fn options(fake: &FakeWinRm, auth: WinRmAuth) -> WinRmOptions {
    let cfg = FakeConfig::default();
    let mut o = WinRmOptions::new(
        "127.0.0.1",
        fake.port(),
        &cfg.user,
        SecretString::from(cfg.password),
    );
    o.auth = auth;
    o.operation_timeout_secs = 2;
    o
}

type Lines = Arc<Mutex<Vec<(Stream, String)>>>;

fn collector() -> (Lines, impl Fn(Stream, &str) + Send + Sync) {
    let lines: Lines = Arc::default();
    let l = lines.clone();
    (lines, move |s: Stream, line: &str| {
        l.lock().unwrap().push((s, line.to_string()))
    })
}

#[tokio::test]
async fn runs_a_command_and_streams_several_receive_rounds() {
    let fake = FakeWinRm::start(FakeConfig::default()).await;
    fake.lines_per_receive(2);
    let shell = WinRmShell::connect(&options(&fake, WinRmAuth::Ntlm))
        .await
        .unwrap();
    let (lines, on_line) = collector();
    let out = shell.run("numbers 7", T, &on_line).await.unwrap();
    assert_eq!(out.exit_status, 0);
    assert_eq!(out.stdout.lines().count(), 7);
    let got: Vec<String> = lines
        .lock()
        .unwrap()
        .iter()
        .map(|(_, l)| l.clone())
        .collect();
    assert_eq!(
        got,
        (1..=7).map(|i| format!("line {i}")).collect::<Vec<_>>()
    );
    let stats = fake.stats();
    let receives = stats.actions.iter().filter(|a| *a == "Receive").count();
    assert!(
        receives >= 4,
        "7 lines at 2 per Receive take 4 rounds: {stats:?}"
    );
    assert!(stats.ntlm_logins > 0 && stats.basic_logins == 0);
    assert!(stats.actions.contains(&"Signal".to_string()));
    shell.close().await;
    assert_eq!(fake.stats().shells_open, 0, "close deletes the shell");
}

#[tokio::test]
async fn reports_exit_codes_and_stderr_of_cmd_and_powershell() {
    let fake = FakeWinRm::start(FakeConfig::default()).await;
    let shell = WinRmShell::connect(&options(&fake, WinRmAuth::Ntlm))
        .await
        .unwrap();
    let quiet = |_: Stream, _: &str| {};
    let out = shell.run("exit /b 3", T, &quiet).await.unwrap();
    assert_eq!(out.exit_status, 3);
    let (lines, on_line) = collector();
    let out = shell.run("frobnicate --now", T, &on_line).await.unwrap();
    assert_eq!(out.exit_status, 1);
    assert!(out.stderr.contains("'frobnicate' is not recognized"));
    assert!(lines
        .lock()
        .unwrap()
        .iter()
        .any(|(s, l)| *s == Stream::Stderr && l.contains("not recognized")));
    // PowerShell errors arrive as CLIXML and come out as plain text.
    let script = format!(
        "Set-NetIPInterface -InterfaceAlias {} -Dhcp Enabled\nSet-DnsClientServerAddress -InterfaceAlias {} -ResetServerAddresses",
        ps_quote("Ethernet 9"),
        ps_quote("Ethernet 9")
    );
    let out = shell
        .run(&powershell_command(&script), T, &quiet)
        .await
        .unwrap();
    assert_eq!(out.exit_status, 1);
    assert!(
        out.stderr
            .starts_with("Set-NetIPInterface : No MSFT_NetIPInterface objects found")
            && !out.stderr.contains("CLIXML"),
        "{}",
        out.stderr
    );
    shell.close().await;
}

#[tokio::test]
async fn logs_in_with_ntlm_and_seals_every_message_on_plain_http() {
    let fake = FakeWinRm::start(FakeConfig {
        basic: false,
        ..FakeConfig::default()
    })
    .await;
    let shell = WinRmShell::connect(&options(&fake, WinRmAuth::Ntlm))
        .await
        .unwrap();
    let quiet = |_: Stream, _: &str| {};
    let out = shell
        .run(
            &powershell_command("(Get-CimInstance Win32_OperatingSystem).Caption"),
            T,
            &quiet,
        )
        .await
        .unwrap();
    assert_eq!(out.stdout.trim(), "Microsoft Windows Server 2022 Standard");
    shell.close().await;
    let stats = fake.stats();
    assert_eq!(stats.ntlm_logins, 1, "one handshake for the connection");
    assert!(stats.sealed_requests >= 4, "{stats:?}");
    assert_eq!(stats.sealed_requests as usize, stats.actions.len());
    assert_eq!(stats.shells_open, 0);
}

#[tokio::test]
async fn logs_in_again_when_the_server_recycles_the_connection() {
    let fake = FakeWinRm::start(FakeConfig::default()).await;
    fake.answers_per_connection(2);
    let shell = WinRmShell::connect(&options(&fake, WinRmAuth::Ntlm))
        .await
        .unwrap();
    let quiet = |_: Stream, _: &str| {};
    for _ in 0..3 {
        let out = shell.run("hostname", T, &quiet).await.unwrap();
        assert_eq!(out.stdout.trim(), "WIN-VMSCAN01");
    }
    shell.close().await;
    let stats = fake.stats();
    // Create + 3 × (Command, Receive, Signal) + Delete = 11 answers, 2 per connection.
    assert_eq!(stats.actions.len(), 11, "{stats:?}");
    assert_eq!(stats.ntlm_logins, 6, "{stats:?}");
    assert_eq!(stats.shells_open, 0);
}

#[tokio::test]
async fn basic_auth_is_refused_over_plain_http_before_anything_is_sent() {
    let fake = FakeWinRm::start(FakeConfig::default()).await;
    let err = WinRmShell::connect(&options(&fake, WinRmAuth::Basic))
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains("Basic authentication is used only over HTTPS"),
        "{err}"
    );
    assert_eq!(
        fake.stats().actions.len(),
        0,
        "no request reached the guest"
    );
}

#[tokio::test]
async fn a_wrong_password_is_a_clear_authentication_error() {
    let fake = FakeWinRm::start(FakeConfig::default()).await;
    for auth in [WinRmAuth::Ntlm] {
        let mut o = options(&fake, auth);
        o.password = SecretString::from("wrong".to_string());
        let err = WinRmShell::connect(&o).await.err().expect("login fails");
        match &err {
            RemoteError::Auth { user, reason } => {
                assert_eq!(user, "Administrator");
                assert!(reason.contains("401 Unauthorized"), "{reason}");
                assert!(reason.contains(auth.as_str()), "{reason}");
            }
            other => panic!("expected an auth error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_soap_fault_shows_its_code_and_text() {
    let fake = FakeWinRm::start(FakeConfig::default()).await;
    let shell = WinRmShell::connect(&options(&fake, WinRmAuth::Ntlm))
        .await
        .unwrap();
    fake.fail_next(
        "Command",
        "w:AccessDenied",
        "Access is denied for this remote shell.",
    );
    let quiet = |_: Stream, _: &str| {};
    let err = shell.run("hostname", T, &quiet).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, RemoteError::Fault { .. }), "{err:?}");
    assert!(
        text.contains("s:Sender/w:AccessDenied")
            && text.contains("WSManFault 2150858843")
            && text.contains("Access is denied for this remote shell."),
        "{text}"
    );
    // The shell still works afterwards.
    let out = shell.run("hostname", T, &quiet).await.unwrap();
    assert_eq!(out.stdout.trim(), "WIN-VMSCAN01");
    shell.close().await;
}

#[tokio::test]
async fn receive_timeouts_are_waited_out_and_a_hung_command_times_out() {
    let fake = FakeWinRm::start(FakeConfig::default()).await;
    let shell = WinRmShell::connect(&options(&fake, WinRmAuth::Ntlm))
        .await
        .unwrap();
    fake.receive_timeouts(2);
    let quiet = |_: Stream, _: &str| {};
    let out = shell.run("hostname", T, &quiet).await.unwrap();
    assert_eq!(out.stdout.trim(), "WIN-VMSCAN01");

    let started = Instant::now();
    let err = shell
        .run("ping -n 600 127.0.0.1", Duration::from_secs(2), &quiet)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RemoteError::Timeout { secs: 2, .. }),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(8));
    shell.close().await;
}

#[tokio::test]
async fn an_unreachable_host_is_a_connect_error() {
    // A port that was just free: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut o = WinRmOptions::new(
        "127.0.0.1",
        port,
        "Administrator",
        SecretString::from("x".to_string()),
    );
    o.connect_timeout = Duration::from_secs(2);
    let err = WinRmShell::connect(&o).await.err().unwrap();
    assert!(
        matches!(&err, RemoteError::Connect { addr, .. } if addr == &format!("127.0.0.1:{port}")),
        "{err:?}"
    );
}

#[tokio::test]
async fn uploads_a_multi_chunk_file_and_reads_it_back() {
    let fake = FakeWinRm::start(FakeConfig::default()).await;
    let shell = WinRmShell::connect(&options(&fake, WinRmAuth::Ntlm))
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("agent.msi");
    // 300 KiB of varied bytes: five stdin chunks.
    let data: Vec<u8> = (0..300 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&local, &data).unwrap();
    let remote = r"C:\Windows\Temp\vmscan\agent.msi";
    shell.upload(&local, remote, T).await.unwrap();
    assert_eq!(fake.guest().file(remote), Some(&data));
    let sends = fake.stats().actions.iter().filter(|a| *a == "Send").count();
    assert_eq!(sends, 5);

    let back = shell.read_file(remote, 10 << 20, T).await.unwrap();
    assert_eq!(back, data);
    let head = shell.read_file(remote, 1000, T).await.unwrap();
    assert_eq!(head, data[..1000]);
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, b"").unwrap();
    shell.upload(&empty, r"C:\Temp\empty.txt", T).await.unwrap();
    assert_eq!(fake.guest().file(r"C:\Temp\empty.txt"), Some(&Vec::new()));
    let err = shell.read_file(r"C:\nope.log", 1000, T).await.unwrap_err();
    assert!(
        matches!(&err, RemoteError::File { path, reason } if path == r"C:\nope.log" && reason.contains("no such file")),
        "{err:?}"
    );
    shell.close().await;
}

#[tokio::test]
async fn speaks_https_with_a_ca_bundle_or_without_verification() {
    let (cert, key) = support::tls::self_signed();
    let fake = FakeWinRm::start(FakeConfig {
        tls: Some((cert.clone(), key)),
        ..FakeConfig::default()
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("ca.pem");
    std::fs::write(&bundle, cert).unwrap();
    let quiet = |_: Stream, _: &str| {};

    let mut o = options(&fake, WinRmAuth::Basic);
    o.host = "localhost".into();
    o.scheme = WinRmScheme::Https;
    o.ca_bundle = Some(bundle);
    let shell = WinRmShell::connect(&o).await.unwrap();
    assert!(shell.endpoint().starts_with("https://localhost:"));
    assert_eq!(
        shell
            .run("hostname", T, &quiet)
            .await
            .unwrap()
            .stdout
            .trim(),
        "WIN-VMSCAN01"
    );
    shell.close().await;

    // NTLM over HTTPS: no sealing needed, TLS protects the messages.
    let mut o = options(&fake, WinRmAuth::Ntlm);
    o.scheme = WinRmScheme::Https;
    o.verify_tls = false;
    let shell = WinRmShell::connect(&o).await.unwrap();
    assert_eq!(
        shell
            .run("hostname", T, &quiet)
            .await
            .unwrap()
            .stdout
            .trim(),
        "WIN-VMSCAN01"
    );
    shell.close().await;
    assert_eq!(fake.stats().sealed_requests, 0);

    // Verification on and no CA bundle: the self-signed certificate is refused.
    let mut o = options(&fake, WinRmAuth::Basic);
    o.scheme = WinRmScheme::Https;
    let err = WinRmShell::connect(&o).await.err().unwrap();
    assert!(matches!(err, RemoteError::Connect { .. }), "{err:?}");
}

#[tokio::test]
async fn ntlm_over_https_binds_to_the_tls_channel_for_strict_extended_protection() {
    let (cert, key) = support::tls::self_signed();
    let fake = FakeWinRm::start(FakeConfig {
        tls: Some((cert.clone(), key)),
        strict_channel_binding: true,
        basic: false,
        ..FakeConfig::default()
    })
    .await;
    let mut o = options(&fake, WinRmAuth::Ntlm);
    o.scheme = WinRmScheme::Https;
    o.verify_tls = false;
    let shell = WinRmShell::connect(&o).await.unwrap();
    let out = shell.run("hostname", T, &|_, _| {}).await.unwrap();
    assert_eq!(out.stdout.trim(), "WIN-VMSCAN01");
    shell.close().await;
    let stats = fake.stats();
    assert_eq!((stats.ntlm_logins, stats.unauthorized), (1, 0), "{stats:?}");

    // Through a TLS-terminating relay the client sees another certificate:
    // its bindings name that channel, and the server refuses the login.
    let relay = tls_relay(fake.port(), &cert).await;
    let mut o = options(&fake, WinRmAuth::Ntlm);
    o.scheme = WinRmScheme::Https;
    o.verify_tls = false;
    o.port = relay;
    let err = WinRmShell::connect(&o).await.err().unwrap();
    assert!(matches!(err, RemoteError::Auth { .. }), "{err:?}");
    assert_eq!(fake.stats().ntlm_logins, 1, "no second login got through");
}

/// Accepts TLS with a certificate of its own and relays the bytes over a
/// second TLS connection to `port`: a man in the middle.
async fn tls_relay(port: u16, upstream_ca_pem: &str) -> u16 {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let (own_cert, own_key) = support::tls::self_signed();
    let acceptor = support::tls::tls_acceptor(&own_cert, &own_key);
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(upstream_ca_pem.as_bytes()).unwrap())
        .unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let (acceptor, connector) = (acceptor.clone(), connector.clone());
            tokio::spawn(async move {
                let Ok(mut down) = acceptor.accept(sock).await else {
                    return;
                };
                let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .unwrap();
                let name = ServerName::try_from("localhost").unwrap();
                let Ok(mut up) = connector.connect(name, tcp).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
            });
        }
    });
    relay_port
}

// ---------------------------------------------------------------- end to end

use std::path::Path;

use async_trait::async_trait;
use serde_json::{json, Value};
use vmscan::cluster::{
    image_name, ClusterError, ClusterImage, ClusterProvider, ClusterVm, Clusters, Deadlines, Owned,
    Progress, VmSpec,
};
use vmscan::config::{AgentProfile, Config};
use vmscan::domain::{JobId, StageName};

use fake_winrm::ServiceState;
use support::{stage, Backend, TestApp};

/// A cluster whose every VM is the fake Windows guest: no real cluster can
/// boot Windows here. It records what the pipeline asked of it.
struct WindowsCluster {
    winrm_port: u16,
    calls: Mutex<Vec<String>>,
    /// Where the VM answers from the second `wait_ready` on (after a DHCP
    /// switch gave it a new address); the first is always 127.0.0.1.
    later_host: Mutex<Option<String>>,
}

#[async_trait]
impl ClusterProvider for WindowsCluster {
    fn name(&self) -> String {
        // The app's default cluster, so submitted jobs land here.
        vmscan::cluster::qemu::PROVIDER_NAME.to_string()
    }

    async fn upload_image(
        &self,
        job: JobId,
        image: &vmscan::cluster::ImageFile,
        _progress: Progress<'_>,
    ) -> Result<ClusterImage, ClusterError> {
        let size = image.file_size;
        self.calls.lock().unwrap().push("upload_image".into());
        Ok(ClusterImage {
            id: format!("img-{}", job.short()),
            name: image_name(job),
            size,
            virtual_size: image.virtual_size,
        })
    }

    async fn create_vm(&self, spec: &VmSpec) -> Result<ClusterVm, ClusterError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("create_vm os={}", spec.os));
        Ok(ClusterVm {
            id: format!("vm-{}", spec.job.short()),
            name: spec.name.clone(),
            host: None,
            port: None,
            detail: json!({}),
        })
    }

    async fn wait_ready(
        &self,
        vm: &ClusterVm,
        _deadlines: &Deadlines,
    ) -> Result<ClusterVm, ClusterError> {
        let mut vm = vm.clone();
        let first = {
            let mut calls = self.calls.lock().unwrap();
            calls.push("wait_ready".into());
            calls.iter().filter(|c| *c == "wait_ready").count() == 1
        };
        let later = self.later_host.lock().unwrap().clone();
        vm.host = Some(match later {
            Some(h) if !first => h,
            _ => "127.0.0.1".into(),
        });
        vm.port = Some(self.winrm_port);
        Ok(vm)
    }

    async fn console_tail(&self, _vm: &ClusterVm, _max_bytes: usize) -> Option<String> {
        None
    }

    async fn delete_vm(&self, vm_id: &str) -> Result<(), ClusterError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("delete_vm {vm_id}"));
        Ok(())
    }

    async fn delete_image(&self, image_id: &str) -> Result<(), ClusterError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("delete_image {image_id}"));
        Ok(())
    }

    async fn list_owned(&self) -> Result<Vec<Owned>, ClusterError> {
        Ok(Vec::new())
    }
}

const STAGES: [StageName; 6] = [
    StageName::Fetch,
    StageName::ClusterUpload,
    StageName::VmCreate,
    StageName::AgentInstall,
    StageName::LogCheck,
    StageName::Teardown,
];

const UPLOAD_URL: &str = "http://beacon.example.com/ManageSoftRL/";
const DOWNLOAD_URL: &str = "http://beacon.example.com/ManageSoftDL/";

/// The Windows profile: Flexera's bundle, its defaults otherwise (the
/// beacon is in the bundle's transform).
fn windows_profile(bundle: &Path, dhcp: bool) -> AgentProfile {
    AgentProfile {
        installer: bundle.display().to_string(),
        switch_to_dhcp: dhcp,
        log_timeout_secs: 5,
        log_poll_secs: 1,
        ..AgentProfile::default()
    }
}

/// A zip of `files` (name, bytes) at `path`, as Flexera's download is.
fn write_zip(path: &Path, files: &[(&str, Vec<u8>)]) {
    use std::io::Write;
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts: zip::write::SimpleFileOptions = zip::write::SimpleFileOptions::default();
    for (name, data) in files {
        z.start_file(*name, opts).unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap();
}

/// Flexera's Windows bundle: MSI, cabinet, the transform carrying the
/// beacon's bootstrap download location, and the bootstrap schedule.
fn flexera_bundle(msi: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let mut mst = vec![0xd0u8, 0xcf, 0x11, 0xe0];
    mst.extend_from_slice(format!("\0DEPLOYSERVERURL\0{DOWNLOAD_URL}\0").as_bytes());
    vec![
        ("FlexNet Inventory Agent.msi", msi.to_vec()),
        ("Data1.cab", vec![0x4d, 0x53, 0x43, 0x46, 1, 2, 3]),
        ("InstallFlexNetInvAgent.mst", mst),
        ("Bootstrap Machine Schedule.nds", b"schedule".to_vec()),
    ]
}

struct Scan {
    app: TestApp,
    guest: FakeWinRm,
    cluster: Arc<WindowsCluster>,
    msi: Vec<u8>,
    image_url: String,
    _tmp: tempfile::TempDir,
}

/// The app with the fake Windows cluster; `tweak` adjusts the config.
async fn scan_world(tweak: impl Fn(&mut Config, &Path) + Send + Sync + 'static) -> Scan {
    let guest = FakeWinRm::start(FakeConfig {
        basic: false,
        ..FakeConfig::default()
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let image = root.join("win2022.raw");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let msi_path = root.join("flexera-agent.zip");
    let msi: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
    write_zip(&msi_path, &flexera_bundle(&msi));
    let cluster = Arc::new(WindowsCluster {
        winrm_port: guest.port(),
        calls: Mutex::default(),
        later_host: Mutex::default(),
    });
    let configure = move |c: &mut Config| {
        c.fetch.allowed_roots = vec![root.clone()];
        c.pipeline.stages = STAGES.to_vec();
        c.pipeline.retry_limit = 0;
        c.vm.login_secs = 5;
        c.vm.command_secs = 60;
        c.vm.winrm.password = Some(SecretString::from(FakeConfig::default().password));
        c.vm.winrm.operation_timeout_secs = 2;
        c.agent
            .profiles
            .insert("windows".into(), windows_profile(&msi_path, true));
        tweak(c, &root);
    };
    let mut cfg = Config::default();
    configure(&mut cfg);
    let pipeline =
        vmscan::pipeline::build_on(&cfg, Arc::new(Clusters::single(cluster.clone(), "test")));
    let app = TestApp::spawn_with(Backend::Sqlite, configure, Some(pipeline)).await;
    Scan {
        app,
        guest,
        cluster,
        msi,
        image_url: format!("file://{}", image.display()),
        _tmp: tmp,
    }
}

impl Scan {
    async fn run_windows_job(&self) -> (Value, String) {
        let job = self
            .app
            .submit(json!({"url": self.image_url, "os": "windows"}))
            .await;
        let id = job["id"].as_str().unwrap().to_string();
        let done = self.app.wait_final(&id, Duration::from_secs(90)).await;
        let log = self.app.log_text(&id).await;
        (done, log)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_a_windows_template_over_winrm_end_to_end() {
    let w = scan_world(|_, _| {}).await;
    let (done, log) = w.run_windows_job().await;
    assert_eq!(done["state"], "succeeded", "{done:#}\n{log}");
    for s in [
        "fetch",
        "cluster-upload",
        "vm-create",
        "agent-install",
        "log-check",
        "teardown",
    ] {
        assert_eq!(stage(&done, s)["state"], "succeeded", "stage {s}: {done:#}");
    }
    let vm = &stage(&done, "vm-create")["detail"];
    assert_eq!(vm["os"], "Microsoft Windows Server 2022 Standard");
    assert_eq!(vm["winrm_port"], w.guest.port());
    let ip = vm["ip_configuration"].as_str().unwrap();
    assert!(
        ip.contains("InterfaceAlias       : Ethernet") && ip.contains("10.20.30.40"),
        "{ip}"
    );

    // The job log: IP configuration before and after the DHCP switch, and msiexec's own log.
    assert!(log.contains("IPv4Address          : 10.20.30.40"), "{log}");
    assert!(
        log.contains("PS> Set-NetIPInterface -InterfaceAlias 'Ethernet' -Dhcp Enabled"),
        "{log}"
    );
    assert!(log.contains("IPv4Address          : 10.20.30.141"), "{log}");
    assert!(
        log.contains("msiexec exited with status 0 (success)"),
        "{log}"
    );
    assert!(
        log.contains("msiexec: MSI (c) (A4:B8) [14:00:10:000]: MainEngineThread is returning 0"),
        "{log}"
    );
    // Flexera's own command line for its bundle, and no MGSFT_* keys.
    let dir = r"C:\Windows\Temp\vmscan\agent";
    let args = agent_detail_args(&done);
    assert_eq!(
        args,
        format!(
            r#"/i "{dir}\FlexNet Inventory Agent.msi" TRANSFORMS="{dir}\InstallFlexNetInvAgent.mst" GENERATEINVENTORY=YES APPLYPOLICY=YES BOOTSTRAPSCHEDULE="Bootstrap Machine Schedule" REBOOT=ReallySuppress /l*v "C:\Windows\Temp\vmscan\msiexec.log" /qn"#
        )
    );
    assert!(!log.contains("MGSFT_"), "{log}");
    // The computer name: 15 characters at most, set before the install, and
    // the one the agent reported to the beacon from the transform.
    let name = vm["hostname"].as_str().unwrap().to_string();
    assert!(name.starts_with("VMS-") && name.len() == 15, "{name}");
    assert!(
        log.contains(&format!(
            "computer name is \"WIN-VMSCAN01\", not the job's {name}: renaming and restarting"
        )),
        "{log}"
    );
    assert_eq!(vm["renamed_from"], "WIN-VMSCAN01");
    assert_eq!(
        w.guest.guest().inventory_uploads,
        [(UPLOAD_URL.to_string(), name.clone())]
    );
    assert_eq!(w.guest.guest().restarts, 1);
    assert!(
        log.contains("ndinit: Running") && log.contains("mgssecsvc: Running"),
        "{log}"
    );
    assert!(
        !log.contains("-EncodedCommand"),
        "scripts are shown, not their encoding"
    );

    let agent = &stage(&done, "agent-install")["detail"];
    assert_eq!(agent["exit_status"], 0);
    assert_eq!(agent["service_check"], "passed");
    assert!(agent["dhcp"]["ip_configuration"]
        .as_str()
        .unwrap()
        .contains("10.20.30.141"));
    let excerpts = stage(&done, "log-check")["detail"]["excerpts"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(excerpts.len(), 2, "{excerpts:?}");
    assert!(excerpts
        .iter()
        .any(|e| e["file"] == r"C:\Windows\Temp\ManageSoft\tracker.log"));

    {
        let g = w.guest.guest();
        assert!(g.dhcp, "the interface was switched to DHCP");
        assert_eq!(
            g.file(r"C:\Windows\Temp\vmscan\agent\FlexNet Inventory Agent.msi"),
            Some(&w.msi)
        );
        assert!(g.file(r"C:\Windows\Temp\vmscan\agent\Data1.cab").is_some());
        let dhcp_at = g
            .ran
            .iter()
            .position(|r| r.contains("Set-NetIPInterface"))
            .unwrap();
        let msi_at = g.ran.iter().position(|r| r.contains("msiexec")).unwrap();
        assert!(dhcp_at < msi_at, "DHCP before the install");
    }
    let stats = w.guest.stats();
    assert_eq!(
        stats.shells_open, 0,
        "every stage deleted its shell: {stats:?}"
    );
    assert!(
        stats.sealed_requests > 10 && stats.ntlm_logins >= 3,
        "{stats:?}"
    );
    let calls = w.cluster.calls.lock().unwrap().clone();
    assert!(
        calls.contains(&"create_vm os=windows".to_string()),
        "{calls:?}"
    );
    assert!(
        calls.iter().any(|c| c.starts_with("delete_vm ")),
        "{calls:?}"
    );

    // The job page shows the IP configuration and msiexec's output.
    let id = done["id"].as_str().unwrap();
    let (status, page) = w.app.get_text(&format!("/jobs/{id}")).await;
    assert_eq!(status, 200);
    assert!(page.contains("10.20.30.40") && page.contains("MainEngineThread is returning 0"));
    assert!(
        page.contains("windows <span class=\"muted\" id=\"job-os-source\">(chosen)</span>"),
        "{page}"
    );
    assert_eq!(
        (done["os"].as_str(), done["os_source"].as_str()),
        (Some("windows"), Some("chosen"))
    );
}

/// A disk laid out as Windows Setup does on UEFI: GPT with an EFI system
/// partition, the Microsoft reserved partition and an NTFS volume.
fn windows_gpt_disk() -> Vec<u8> {
    const MIB: usize = 1 << 20;
    // (type GUID as stored on disk: first three fields little-endian, first MiB, MiBs)
    let parts: [([u8; 16], usize, usize); 3] = [
        (
            *b"\x28\x73\x2a\xc1\x1f\xf8\xd2\x11\xba\x4b\x00\xa0\xc9\x3e\xc9\x3b",
            1,
            2,
        ),
        (
            *b"\x16\xe3\xc9\xe3\x5c\x0b\xb8\x4d\x81\x7d\xf9\x2d\xf0\x02\x15\xae",
            3,
            1,
        ),
        (
            *b"\xa2\xa0\xd0\xeb\xe5\xb9\x33\x44\x87\xc0\x68\xb6\xb7\x26\x99\xc7",
            4,
            12,
        ),
    ];
    let mut d = vec![0u8; 16 * MIB];
    let mut put = |at: usize, b: &[u8]| d[at..at + b.len()].copy_from_slice(b);
    put(446 + 4, &[0xee]);
    put(510, &[0x55, 0xaa]);
    put(512, b"EFI PART");
    put(512 + 72, &2u64.to_le_bytes());
    put(512 + 80, &128u32.to_le_bytes());
    put(512 + 84, &128u32.to_le_bytes());
    for (i, (ty, first, len)) in parts.iter().enumerate() {
        let lba = (first * MIB / 512) as u64;
        put(1024 + 128 * i, ty);
        put(1024 + 128 * i + 32, &lba.to_le_bytes());
        put(
            1024 + 128 * i + 40,
            &(lba + (len * MIB / 512) as u64 - 1).to_le_bytes(),
        );
    }
    put(4 * MIB + 3, b"NTFS    ");
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_submitted_without_an_os_is_detected_as_windows_and_scanned_over_winrm() {
    let w = scan_world(|c, _| {
        c.pipeline.stages = vec![
            StageName::Fetch,
            StageName::Inspect,
            StageName::Convert,
            StageName::ClusterUpload,
            StageName::VmCreate,
            StageName::AgentInstall,
            StageName::LogCheck,
            StageName::Teardown,
        ];
    })
    .await;
    // qcow2 under a .raw name: detection reads the guest's view through
    // qemu-img and never trusts the name.
    let path = w.image_url.trim_start_matches("file://").to_string();
    let raw = format!("{path}.src");
    std::fs::write(&raw, windows_gpt_disk()).unwrap();
    let out = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2", &raw, &path])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let job = w.app.submit(json!({"url": w.image_url})).await;
    assert_eq!(
        (job["os"].as_str(), job["os_source"].as_str()),
        (Some("auto"), Some("pending"))
    );
    let id = job["id"].as_str().unwrap().to_string();
    let done = w.app.wait_final(&id, Duration::from_secs(90)).await;
    let log = w.app.log_text(&id).await;
    assert_eq!(done["state"], "succeeded", "{done:#}\n{log}");
    assert_eq!(done["os"], "windows", "{done:#}");
    assert_eq!(done["os_source"], "detected");
    let evidence = "partition 3 (Microsoft basic data, 12.0 MiB) holds ntfs";
    assert_eq!(done["os_evidence"], evidence);
    let inspected = &stage(&done, "inspect")["detail"]["guest_os"];
    assert_eq!(inspected["table"], "gpt");
    assert_eq!(inspected["partitions"].as_array().unwrap().len(), 3);
    assert!(
        log.contains(&format!("guest OS: windows, detected ({evidence})")),
        "{log}"
    );
    let calls = w.cluster.calls.lock().unwrap().clone();
    assert!(
        calls.contains(&"create_vm os=windows".to_string()),
        "{calls:?}"
    );
    assert!(w.guest.stats().ntlm_logins >= 1, "the scan went over WinRM");
    let (status, page) = w.app.get_text(&format!("/jobs/{id}")).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("windows <span class=\"muted\" id=\"job-os-source\">(detected: partition 3"),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dhcp_switch_survives_a_lost_connection_and_a_new_address() {
    let w = scan_world(|_, _| {}).await;
    // The switch answers nothing (the address changed under the connection),
    // and the cluster then reports the VM at another address.
    w.guest.guest().dhcp_drops_connection = true;
    *w.cluster.later_host.lock().unwrap() = Some("localhost".into());
    let (done, log) = w.run_windows_job().await;
    assert_eq!(done["state"], "succeeded", "{done:#}\n{log}");
    assert!(
        log.contains("the WinRM connection was lost during the switch"),
        "{log}"
    );
    let port = w.guest.port();
    assert!(
        log.contains(&format!(
            "the VM's address changed from 127.0.0.1:{port} to localhost:{port}; logged in there"
        )),
        "{log}"
    );
    assert!(
        log.contains(
            "PS> (Get-NetIPInterface -InterfaceAlias 'Ethernet' -AddressFamily IPv4).Dhcp"
        ),
        "{log}"
    );
    assert!(
        log.contains("Ethernet now takes its address and DNS servers from DHCP"),
        "{log}"
    );
    let agent = &stage(&done, "agent-install")["detail"];
    assert_eq!(agent["winrm_host"], "localhost");
    assert_eq!(agent["readdressed"], true);
    assert!(agent["dhcp"]["ip_configuration"]
        .as_str()
        .unwrap()
        .contains("10.20.30.141"));
    // vm-create spoke to the first address; after the switch, everything
    // (the rest of agent-install and log-check) went to the new one.
    assert_eq!(stage(&done, "log-check")["state"], "succeeded");
    let hosts = w.guest.stats().hosts;
    let first_new = hosts
        .iter()
        .position(|h| h.starts_with("localhost:"))
        .expect("some request went to the new address");
    assert!(
        first_new > 0 && hosts[0].starts_with("127.0.0.1:"),
        "{hosts:?}"
    );
    assert!(
        hosts[first_new..]
            .iter()
            .all(|h| h.starts_with("localhost:")),
        "{hosts:?}"
    );
    let calls = w.cluster.calls.lock().unwrap().clone();
    assert_eq!(
        calls.iter().filter(|c| *c == "wait_ready").count(),
        2,
        "{calls:?}"
    );
    assert!(w.guest.guest().dhcp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dhcp_switch_that_did_not_take_fails_agent_install() {
    let w = scan_world(|_, _| {}).await;
    w.guest.guest().interface_alias = "Ethernet 2".into();
    let (done, log) = w.run_windows_job().await;
    assert_eq!(done["state"], "failed", "{done:#}");
    let err = stage(&done, "agent-install")["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        err.starts_with("switching Ethernet to DHCP failed with status 1: ")
            && err.contains("No MSFT_NetIPInterface objects found"),
        "{err}\n{log}"
    );
    assert_eq!(stage(&done, "teardown")["state"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_msiexec_fails_agent_install_with_its_log() {
    let w = scan_world(|_, _| {}).await;
    w.guest.guest().msi_exit = 1603;
    let (done, log) = w.run_windows_job().await;
    assert_eq!(done["state"], "failed", "{done:#}");
    let s = stage(&done, "agent-install");
    assert_eq!(s["state"], "failed");
    let err = s["error"].as_str().unwrap();
    assert!(
        err.contains("msiexec exited with status 1603 (fatal error during installation)")
            && err.contains("Return value 3"),
        "{err}"
    );
    assert!(log.contains("msiexec: MSI (s) (C0:D4) [14:00:05:010]: Product: FlexNet Inventory Agent -- Installation failed."), "{log}");
    assert_eq!(stage(&done, "teardown")["state"], "succeeded");
    assert!(!w.guest.guest().services.contains_key("ndinit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_agent_service_fails_agent_install() {
    let w = scan_world(|c, _| {
        c.agent.profiles.get_mut("windows").unwrap().switch_to_dhcp = false;
    })
    .await;
    w.guest.guest().services_after_install = ServiceState::Stopped;
    let (done, log) = w.run_windows_job().await;
    let err = stage(&done, "agent-install")["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(done["state"], "failed", "{done:#}\n{log}");
    assert_eq!(
        err, "agent services not running: ndinit: Stopped, mgssecsvc: Stopped",
        "{log}"
    );
    assert!(!w.guest.guest().dhcp, "no DHCP switch unless asked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_beacon_error_does_not_fail_log_check_by_default() {
    let w = scan_world(|_, _| {}).await;
    // Agents log beacon errors and retry by design: no blanket "error" pattern.
    w.guest.guest().tracker_extra =
        "[Mon Nov 23 14:00:22 2026 (N, 0)] {2345} ERROR: Policy download from beacon failed; will retry\r\n".into();
    let (done, log) = w.run_windows_job().await;
    assert_eq!(done["state"], "succeeded", "{done:#}\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_without_beacon_settings_is_refused_before_the_upload() {
    let w = scan_world(|c, root| {
        let zip = root.join("bare.zip");
        write_zip(
            &zip,
            &[
                ("FlexNet Inventory Agent.msi", vec![1; 100]),
                ("Data1.cab", vec![2; 10]),
            ],
        );
        c.agent.profiles.get_mut("windows").unwrap().installer = zip.display().to_string();
    })
    .await;
    let (done, log) = w.run_windows_job().await;
    assert_eq!(done["state"], "failed", "{done:#}\n{log}");
    assert_eq!(
        stage(&done, "agent-install")["error"],
        "the Windows agent bundle has no beacon settings: add InstallFlexNetInvAgent.mst or mgssetup.ini (Flexera's bootstrap files), or set download_url (DEPLOYSERVERURL)"
    );
    assert!(w.guest.guest().msiexec_runs.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mgssetup_ini_or_deployserverurl_name_the_beacon() {
    // mgssetup.ini beside the MSI, no transform: msiexec gets no TRANSFORMS
    // and the agent finds its beacon in the ini.
    let w = scan_world(|c, root| {
        let zip = root.join("ini.zip");
        let ini = format!("[Bootstrap]\r\nDownloadLocation={DOWNLOAD_URL}\r\n");
        write_zip(
            &zip,
            &[
                ("agent/FlexNet Inventory Agent.msi", vec![1; 100]),
                ("agent/Data1.cab", vec![2; 10]),
                ("agent/mgssetup.ini", ini.into_bytes()),
            ],
        );
        let p = c.agent.profiles.get_mut("windows").unwrap();
        p.installer = zip.display().to_string();
        p.switch_to_dhcp = false;
    })
    .await;
    let (done, log) = w.run_windows_job().await;
    assert_eq!(done["state"], "succeeded", "{done:#}\n{log}");
    let args = agent_detail_args(&done);
    assert!(
        !args.contains("TRANSFORMS")
            && args.starts_with(r#"/i "C:\Windows\Temp\vmscan\agent\agent\FlexNet"#),
        "{args}"
    );
    assert_eq!(w.guest.guest().inventory_uploads.len(), 1);

    // A lone MSI with the beacon from download_url as DEPLOYSERVERURL.
    let w = scan_world(|c, root| {
        let zip = root.join("msi.zip");
        write_zip(
            &zip,
            &[
                ("FlexNet Inventory Agent.msi", vec![1; 100]),
                ("Data1.cab", vec![2; 10]),
            ],
        );
        let p = c.agent.profiles.get_mut("windows").unwrap();
        p.installer = zip.display().to_string();
        p.download_url = DOWNLOAD_URL.into();
        p.switch_to_dhcp = false;
    })
    .await;
    let (done, log) = w.run_windows_job().await;
    assert_eq!(done["state"], "succeeded", "{done:#}\n{log}");
    assert!(agent_detail_args(&done).contains(&format!(" DEPLOYSERVERURL=\"{DOWNLOAD_URL}\" ")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_without_its_cabinet_is_refused_on_the_host() {
    let w = scan_world(|c, root| {
        let zip = root.join("nocab.zip");
        write_zip(
            &zip,
            &[
                ("FlexNet Inventory Agent.msi", vec![1; 100]),
                ("mgssetup.ini", b"x".to_vec()),
            ],
        );
        c.agent.profiles.get_mut("windows").unwrap().installer = zip.display().to_string();
    })
    .await;
    let (done, _log) = w.run_windows_job().await;
    assert_eq!(
        stage(&done, "agent-install")["error"],
        "the Windows agent bundle has no Data1.cab (the MSI's files) beside FlexNet Inventory Agent.msi"
    );
}

/// The fake's msiexec fails where Windows Installer would: no cabinet
/// beside the MSI (error 1311, exit 1603), a transform that is not there
/// (1624), a package that does not open (1619).
#[tokio::test]
async fn the_fake_msiexec_fails_as_windows_installer_does() {
    let fake = FakeWinRm::start(FakeConfig::default()).await;
    let shell = WinRmShell::connect(&options(&fake, WinRmAuth::Ntlm))
        .await
        .unwrap();
    let run = |args: &str| {
        format!(
            "$p = Start-Process -FilePath 'msiexec.exe' -ArgumentList {} -Wait -PassThru\nexit $p.ExitCode",
            ps_quote(args)
        )
    };
    let ps = |script: String| {
        let shell = &shell;
        async move {
            shell
                .run(&powershell_command(&script), T, &|_, _| {})
                .await
                .unwrap()
                .exit_status
        }
    };
    fake.guest()
        .put(r"C:\a\FlexNet Inventory Agent.msi", vec![1; 10]);
    let msi = r#"/i "C:\a\FlexNet Inventory Agent.msi" /l*v "C:\a\l.log" /qn"#;
    assert_eq!(ps(run(msi)).await, 1603);
    let log = String::from_utf16_lossy(
        &fake.guest().file(r"C:\a\l.log").unwrap()[2..]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect::<Vec<_>>(),
    );
    assert!(
        log.contains("Error 1311. Source file not found: C:\\a\\Data1.cab"),
        "{log}"
    );
    fake.guest().put(r"C:\a\Data1.cab", vec![1; 10]);
    let with_mst = format!(r#"{msi} TRANSFORMS="C:\a\missing.mst""#);
    assert_eq!(ps(run(&with_mst)).await, 1624);
    assert_eq!(ps(run(r#"/i "C:\a\none.msi" /qn"#)).await, 1619);
    assert_eq!(ps(run(msi)).await, 0);
    // Installed without GENERATEINVENTORY: no inventory until the schedule.
    assert!(fake
        .guest()
        .file(r"C:\Windows\Temp\ManageSoft\tracker.log")
        .is_none());
    shell.close().await;
}

fn agent_detail_args(done: &Value) -> String {
    stage(done, "agent-install")["detail"]["msiexec_args"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_pattern_in_the_agent_logs_fails_log_check() {
    let w = scan_world(|c, _| {
        c.agent
            .profiles
            .get_mut("windows")
            .unwrap()
            .forbidden_patterns = vec!["Upload to beacon failed".into()];
    })
    .await;
    w.guest.guest().tracker_extra =
        "[Mon Nov 23 14:00:22 2026 (N, 0)] {2345} ERROR: Upload to beacon failed\r\n".into();
    let (done, log) = w.run_windows_job().await;
    assert_eq!(done["state"], "failed", "{done:#}\n{log}");
    assert_eq!(stage(&done, "agent-install")["state"], "succeeded");
    let err = stage(&done, "log-check")["error"].as_str().unwrap();
    assert!(
        err.contains(r"found in C:\Windows\Temp\ManageSoft\tracker.log")
            && err.contains("ERROR: Upload to beacon failed"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_windows_job_without_a_windows_profile_fails_at_agent_install() {
    let w = scan_world(|c, root| {
        c.agent.profiles.remove("windows");
        let linux = AgentProfile {
            installer: root.join("agent.sh").display().to_string(),
            ..AgentProfile::default()
        };
        c.agent.profiles.insert("linux".into(), linux);
    })
    .await;
    let (done, log) = w.run_windows_job().await;
    assert_eq!(done["state"], "failed", "{done:#}\n{log}");
    assert_eq!(stage(&done, "vm-create")["state"], "succeeded");
    assert_eq!(
        stage(&done, "agent-install")["error"],
        "no agent profile is configured for windows guests ([agent.profiles.windows])"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_winrm_password_fails_vm_create_clearly() {
    let w = scan_world(|c, _| {
        c.vm.login_secs = 3;
        c.vm.winrm.password = Some(SecretString::from("not-it".to_string()));
    })
    .await;
    let (done, log) = w.run_windows_job().await;
    assert_eq!(done["state"], "failed", "{done:#}\n{log}");
    let err = stage(&done, "vm-create")["error"].as_str().unwrap();
    assert!(
        err.starts_with("the VM did not accept a WinRM login within 3 s: authentication as Administrator failed")
            && err.contains("401 Unauthorized to NTLM authentication"),
        "{err}"
    );
    assert!(!log.contains("not-it"), "the password is never logged");
    assert_eq!(w.guest.stats().ntlm_logins, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_windows_job_without_a_winrm_password_fails_with_a_clear_error() {
    let w = scan_world(|c, _| c.vm.winrm.password = None).await;
    let (done, log) = w.run_windows_job().await;
    assert_eq!(done["state"], "failed", "{done:#}\n{log}");
    assert_eq!(
        stage(&done, "vm-create")["error"],
        "no WinRM password is configured for Windows guests (VMSCAN_VM__WINRM__PASSWORD)"
    );
    assert_eq!(w.guest.stats().actions.len(), 0, "nothing was sent");
}

/// A Windows template on Nutanix: the VM gets sysprep customization (not
/// cloud-init), its WinRM port is awaited instead of SSH, and the agent is
/// installed over WinRM on the address Prism reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_windows_template_scans_on_nutanix_with_sysprep_and_winrm() {
    use support::nutanix::{FakeNutanix, CLUSTER, PASSWORD, SUBNET, USER};
    use vmscan::cluster::nutanix::NutanixConfig;

    let prism = FakeNutanix::start().await;
    let guest = FakeWinRm::start(FakeConfig {
        basic: false,
        ..FakeConfig::default()
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let image = root.join("win2022.raw");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let msi_path = root.join("agent.zip");
    write_zip(&msi_path, &flexera_bundle(&[7u8; 40_000]));
    let pc = NutanixConfig {
        url: prism.url(),
        api_version: vmscan::cluster::nutanix::ApiVersion::V3,
        username: USER.into(),
        password: Some(SecretString::from(PASSWORD)),
        cluster_name: CLUSTER.into(),
        subnet_name: SUBNET.into(),
        winrm_port: guest.port(),
        sysprep_unattend_xml: "<unattend><ComputerName>{hostname}</ComputerName><AdministratorPassword><Value>{admin_password}</Value></AdministratorPassword></unattend>".into(),
        task_poll_ms: 50,
        vm_poll_ms: 50,
        retry_backoff_ms: 50,
        ..NutanixConfig::default()
    };
    let r = root.clone();
    let app = TestApp::spawn(Backend::Sqlite, move |c| {
        c.fetch.allowed_roots = vec![r.clone()];
        c.pipeline.stages = STAGES.to_vec();
        c.pipeline.retry_limit = 0;
        c.vm.login_secs = 10;
        c.vm.winrm.password = Some(SecretString::from(FakeConfig::default().password));
        c.vm.winrm.operation_timeout_secs = 2;
        c.agent
            .profiles
            .insert("windows".into(), windows_profile(&msi_path, false));
        c.cluster.qemu.enabled = false;
        c.cluster.nutanix.insert("pc1".into(), pc);
    })
    .await;
    let job = app
        .submit(json!({"url": format!("file://{}", image.display()), "os": "windows"}))
        .await;
    let id = job["id"].as_str().unwrap();
    assert_eq!(
        (job["cluster"].as_str(), job["os"].as_str()),
        (Some("nutanix:pc1"), Some("windows"))
    );
    // "Windows setup": the guest takes the password from the answer file
    // Prism received, so only that password logs in from then on.
    let guest = std::sync::Arc::new(guest);
    let (g, p) = (guest.clone(), prism.clone());
    let setup = tokio::spawn(async move {
        loop {
            if let Some(c) = p.last_vm_customization() {
                use base64::Engine;
                let xml = base64::engine::general_purpose::STANDARD
                    .decode(c["sysprep"]["unattend_xml"].as_str().unwrap())
                    .unwrap();
                let xml = String::from_utf8(xml).unwrap();
                let pw = xml
                    .split("<Value>")
                    .nth(1)
                    .and_then(|t| t.split("</Value>").next())
                    .unwrap()
                    .to_string();
                g.set_password(&pw);
                // Sysprep names the computer from the answer file.
                let name = xml
                    .split("<ComputerName>")
                    .nth(1)
                    .and_then(|t| t.split("</ComputerName>").next())
                    .unwrap()
                    .to_string();
                g.guest().hostname = name;
                return pw;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let done = app.wait_final(id, Duration::from_secs(90)).await;
    let job_pw = setup.await.unwrap();
    let log = app.log_text(id).await;
    assert_eq!(done["state"], "succeeded", "{done:#}\n{log}");
    let vm = &stage(&done, "vm-create")["detail"];
    assert_eq!(vm["cluster"], "nutanix:pc1");
    assert_eq!(vm["winrm_port"], guest.port());
    // Sysprep with the job's hostname, not cloud-init.
    let spec = prism.vm_spec(&vmscan::cluster::vm_name(id.parse().unwrap()));
    assert!(spec.is_none(), "the VM was deleted at teardown");
    assert!(prism.entities().is_empty(), "{:?}", prism.entities());
    let sent = prism
        .seen()
        .iter()
        .any(|s| s.method == "POST" && s.path == "/vms" && s.status == 202);
    assert!(sent);
    let hostname = vm["hostname"].as_str().unwrap();
    let unattend = prism.last_vm_customization().unwrap();
    assert!(unattend.get("cloud_init").is_none(), "{unattend}");
    use base64::Engine;
    let xml = base64::engine::general_purpose::STANDARD
        .decode(unattend["sysprep"]["unattend_xml"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        String::from_utf8(xml).unwrap(),
        format!("<unattend><ComputerName>{hostname}</ComputerName><AdministratorPassword><Value>{job_pw}</Value></AdministratorPassword></unattend>")
    );
    // The job's own password, not the configured one, and it is nowhere in
    // the job's record or log.
    assert_ne!(job_pw, FakeConfig::default().password);
    assert!(job_pw.len() >= 20, "{job_pw}");
    assert_eq!(vm["winrm_credentials"], "job");
    assert!(
        log.contains("this job's own Administrator password"),
        "{log}"
    );
    assert!(!done.to_string().contains(&job_pw) && !log.contains(&job_pw));
    assert!(
        log.contains("msiexec exited with status 0 (success)"),
        "{log}"
    );
    // Sysprep set the NetBIOS-sized name: no rename, no restart.
    assert!(
        hostname.starts_with("VMS-") && hostname.len() == 15,
        "{hostname}"
    );
    assert!(
        log.contains(&format!("computer name {hostname}\n"))
            || log.contains(&format!("computer name {hostname}")),
        "{log}"
    );
    assert_eq!(guest.guest().restarts, 0);
    app.stop().await;
}

/// A guest whose WinRM listener answers endlessly: the client refuses the
/// answer at its cap instead of holding it all in memory.
#[tokio::test]
async fn an_endless_winrm_answer_is_refused_at_the_cap() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let _ = s.read(&mut buf).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/soap+xml\r\ncontent-length: 100000000000\r\n\r\n")
            .await;
        let zeros = vec![b' '; 256 * 1024];
        while s.write_all(&zeros).await.is_ok() {}
    });
    let mut o = WinRmOptions::new(
        "127.0.0.1",
        port,
        "Administrator",
        SecretString::from("pw".to_string()),
    );
    o.auth = WinRmAuth::Ntlm;
    o.operation_timeout_secs = 2;
    let err = WinRmShell::connect(&o).await.err().expect("refused");
    assert!(
        err.to_string().contains("larger than 8388608 bytes"),
        "{err}"
    );
}
