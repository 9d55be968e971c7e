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
async fn runs_a_command_over_basic_auth_and_streams_several_receive_rounds() {
    let fake = FakeWinRm::start(FakeConfig::default()).await;
    fake.lines_per_receive(2);
    let shell = WinRmShell::connect(&options(&fake, WinRmAuth::Basic))
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
    assert!(stats.basic_logins > 0 && stats.ntlm_logins == 0);
    assert!(stats.actions.contains(&"Signal".to_string()));
    shell.close().await;
    assert_eq!(fake.stats().shells_open, 0, "close deletes the shell");
}

#[tokio::test]
async fn reports_exit_codes_and_stderr_of_cmd_and_powershell() {
    let fake = FakeWinRm::start(FakeConfig::default()).await;
    let shell = WinRmShell::connect(&options(&fake, WinRmAuth::Basic))
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
async fn a_wrong_password_is_a_clear_authentication_error() {
    let fake = FakeWinRm::start(FakeConfig::default()).await;
    for auth in [WinRmAuth::Basic, WinRmAuth::Ntlm] {
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
    let shell = WinRmShell::connect(&options(&fake, WinRmAuth::Basic))
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
    let err = shell.read_file(r"C:\nope.log", 1000, T).await.unwrap_err();
    assert!(
        matches!(&err, RemoteError::File { path, reason } if path == r"C:\nope.log" && reason.contains("no such file")),
        "{err:?}"
    );
    shell.close().await;
}

#[tokio::test]
async fn speaks_https_with_a_ca_bundle_or_without_verification() {
    let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let fake = FakeWinRm::start(FakeConfig {
        tls: Some((ca.cert.pem(), ca.signing_key.serialize_pem())),
        ..FakeConfig::default()
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("ca.pem");
    std::fs::write(&bundle, ca.cert.pem()).unwrap();
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
