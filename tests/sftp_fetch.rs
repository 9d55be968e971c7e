//! fetch from `sftp://` against a private OpenSSH server on 127.0.0.1 (its own
//! host key, authorized_keys and sftp-server, in a temp dir), started like
//! tests/ssh_remote.rs does. The server runs here, so remote paths are local.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use sha2::Digest;
use vmscan::domain::StageName;
use vmscan::remote::SshKey;

use support::sshd::{Sshd, SshdSetup};
use support::{stage, Backend, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_over_sftp_with_a_key_and_reports_a_missing_file() {
    let key = SshKey::generate("vmscan-sftp-test").unwrap();
    let sshd = Sshd::start(SshdSetup {
        sftp: true,
        authorized: vec![key.public_line()],
        ..SshdSetup::default()
    });
    let files = sshd.dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let content: Vec<u8> = (0..5 * 1024 * 1024).map(|i| (i * 13 % 251) as u8).collect();
    let image = files.join("disk.img");
    std::fs::write(&image, &content).unwrap();
    let sha256 = hex::encode(sha2::Sha256::digest(&content));
    let key_file = sshd.dir.path().join("client_key");
    {
        use secrecy::ExposeSecret;
        std::fs::write(&key_file, key.to_openssh().unwrap().expose_secret()).unwrap();
    }

    let app = TestApp::spawn(Backend::Sqlite, |cfg| {
        cfg.pipeline.stages = vec![StageName::Fetch, StageName::Checksum];
        cfg.fetch.sftp_key_file = Some(key_file.clone());
        cfg.fetch.sftp_credential_hosts = vec!["127.0.0.1".into()];
    })
    .await;

    let job = app
        .submit(json!({"url": sshd.url(&image), "checksum": format!("sha256:{sha256}")}))
        .await;
    let id = job["id"].as_str().unwrap();
    let done = app.wait_final(id, Duration::from_secs(60)).await;
    assert_eq!(
        done["state"],
        "succeeded",
        "{done:#}\nlog: {}\nsshd: {}",
        app.log_text(id).await,
        sshd.log()
    );
    assert_eq!(stage(&done, "checksum")["detail"]["verified"], true);
    let fetch = &stage(&done, "fetch")["detail"];
    assert_eq!(fetch["size"], content.len() as u64);
    assert_eq!(fetch["sha256"], sha256.as_str());
    assert_eq!(fetch["file_name"], "disk.img");
    let path = fetch["path"].as_str().unwrap();
    assert_ne!(
        Path::new(path),
        image,
        "the image is copied, not read in place"
    );
    assert_eq!(std::fs::read(path).unwrap(), content);
    let log = app.log_text(id).await;
    assert!(log.contains("trusted on first use"), "{log}");

    // A missing file fails at once, with the path in the message.
    let missing = files.join("missing.img");
    let job = app.submit(json!({"url": sshd.url(&missing)})).await;
    let id = job["id"].as_str().unwrap();
    let done = app.wait_final(id, Duration::from_secs(30)).await;
    assert_eq!(done["state"], "failed", "{done:#}");
    let err = done["error"].as_str().unwrap();
    assert!(
        err.starts_with("fetch failed: ")
            && err.contains(&missing.display().to_string())
            && err.contains("no such file"),
        "{err}"
    );
    assert!(!app.log_text(id).await.contains("retry 1"), "not retried");
    app.stop().await;

    // A host key that is not pinned is refused.
    let app = TestApp::spawn(Backend::Sqlite, |cfg| {
        cfg.pipeline.stages = vec![StageName::Fetch];
        cfg.fetch.sftp_key_file = Some(key_file.clone());
        cfg.fetch.sftp_credential_hosts = vec!["127.0.0.1".into()];
        cfg.fetch.sftp_host_keys = vec![
            "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
            "SHA256:BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB".into(),
        ];
    })
    .await;
    let job = app.submit(json!({"url": sshd.url(&image)})).await;
    let done = app
        .wait_final(job["id"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    assert_eq!(done["state"], "failed", "{done:#}");
    let err = done["error"].as_str().unwrap();
    assert!(err.contains("which is not allowed"), "{err}");
    app.stop().await;
}

async fn fetch_fails(app: &TestApp, url: &str) -> String {
    let job = app.submit(json!({ "url": url })).await;
    let done = app
        .wait_final(job["id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    assert_eq!(done["state"], "failed", "{done:#}");
    done["error"].as_str().unwrap_or_default().to_string()
}

/// A server that refuses every key and records every password tried: with no
/// pinned host key it gets no password, an unlisted host gets no credential,
/// a wrong host key ends the talk before any login, and only a pinned, listed
/// host is offered the password (which proves the honeypot would notice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_honeypot_sshd_records_no_password_and_unlisted_hosts_get_no_credentials() {
    let sshd = Sshd::start(SshdSetup {
        sftp: true,
        passwords: true,
        ..SshdSetup::default()
    });
    let image = sshd.scratch().join("disk.img");
    std::fs::write(&image, b"not really an image").unwrap();
    let key = SshKey::generate("vmscan-sftp-honeypot").unwrap();
    let key_file = sshd.dir.path().join("client_key");
    {
        use secrecy::ExposeSecret;
        std::fs::write(&key_file, key.to_openssh().unwrap().expose_secret()).unwrap();
    }
    let pinned = sshd.host_fingerprint();
    let spawn = |hosts: Vec<String>, host_keys: Vec<String>| {
        let key_file = key_file.clone();
        TestApp::spawn(Backend::Sqlite, move |cfg| {
            cfg.pipeline.stages = vec![StageName::Fetch];
            cfg.pipeline.retry_limit = 0;
            cfg.fetch.sftp_key_file = Some(key_file);
            cfg.fetch.sftp_password = Some("CONFIGURED-PW".to_string().into());
            cfg.fetch.sftp_credential_hosts = hosts;
            cfg.fetch.sftp_host_keys = host_keys;
        })
    };
    let with_pw = sshd.url(&image).replace('@', ":URL-PW@");

    // Trust on first use: the key may be tried, no password (URL or configured) is.
    let app = spawn(vec!["127.0.0.1".into()], vec![]).await;
    for url in [sshd.url(&image), with_pw.clone()] {
        let err = fetch_fails(&app, &url).await;
        assert!(err.contains("the host key is not pinned"), "{err}");
    }
    assert!(
        sshd.key_attempts() >= 1,
        "the key was refused: {}",
        sshd.log()
    );
    assert_eq!(sshd.password_attempts(), 0, "{}", sshd.log());
    app.stop().await;

    // A pinned host that is not on the credential list gets neither key nor password.
    let keys_before = sshd.key_attempts();
    let app = spawn(vec!["filer.example".into()], vec![pinned.clone()]).await;
    let err = fetch_fails(&app, &sshd.url(&image)).await;
    assert!(
        err.contains("only for fetch.sftp_credential_hosts"),
        "{err}"
    );
    assert_eq!(sshd.key_attempts(), keys_before);
    assert_eq!(sshd.password_attempts(), 0);
    app.stop().await;

    // Several pinned keys, none right: refused in the handshake, before any login.
    let app = spawn(
        vec!["127.0.0.0/8".into()],
        vec![
            "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
            "SHA256:BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB".into(),
        ],
    )
    .await;
    let err = fetch_fails(&app, &with_pw).await;
    assert!(err.contains("which is not allowed"), "{err}");
    assert_eq!(sshd.key_attempts(), keys_before);
    assert_eq!(sshd.password_attempts(), 0);
    app.stop().await;

    // Control: pinned and listed, so the password is offered, and the honeypot sees it.
    let app = spawn(vec!["127.0.0.1".into()], vec![pinned]).await;
    let err = fetch_fails(&app, &sshd.url(&image)).await;
    assert!(err.contains("SFTP login to"), "{err}");
    assert_eq!(sshd.password_attempts(), 1, "{}", sshd.log());
    app.stop().await;
}
