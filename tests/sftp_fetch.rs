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
