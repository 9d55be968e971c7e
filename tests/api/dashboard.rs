//! The dashboard in a real headless Chromium, driven over WebDriver:
//! paste a URL → popup → job page follows the job to its end.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{Backend, TestApp};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    child: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Driver {
    async fn start() -> Option<Driver> {
        let chromedriver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(chromedriver) = chromedriver else {
            assert!(
                std::env::var("CI").is_err(),
                "chromedriver missing under CI (scripts/install-test-deps.sh installs it)"
            );
            eprintln!("skipped: chromedriver not installed");
            return None;
        };
        let port = free_port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let start = Instant::now();
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "chromedriver did not come up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-quic", "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync", "--window-size=1280,1000",
                         format!("--user-data-dir={}", profile.path().display())]
            }
        }}});
        let resp: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = resp["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {resp}"))
            .to_string();
        Some(Driver {
            child,
            base,
            session,
            http,
            _profile: profile,
        })
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{}", self.base, self.session, path);
        let mut req = self.http.request(method.clone(), &url);
        if method != reqwest::Method::GET {
            req = req.json(&body);
        }
        let resp: Value = req.send().await.unwrap().json().await.unwrap();
        if resp["value"].get("error").is_some() {
            panic!("WebDriver {path}: {resp}");
        }
        resp["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", json!({"url": url}))
            .await;
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        v[ELEMENT].as_str().unwrap().to_string()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{el}/value"),
            json!({"text": text}),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let el = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{el}/click"),
            json!({}),
        )
        .await;
    }

    async fn js(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// Polls a JS expression until it returns a non-empty string.
    async fn wait_text(&self, expr: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let v = self.js(&format!("return {expr};")).await;
            if let Some(s) = v.as_str().filter(|s| !s.is_empty()) {
                return s.to_string();
            }
            if start.elapsed() > timeout {
                let body = self.js("return document.body.innerText;").await;
                panic!("timed out waiting for {expr}; page text: {body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self, path: &std::path::Path) {
        use base64_decode as b64;
        let v = self
            .cmd(reqwest::Method::GET, "/screenshot", json!({}))
            .await;
        std::fs::write(path, b64(v.as_str().unwrap())).unwrap();
    }
}

/// Minimal base64 decoding for screenshots (no extra dependency for tests).
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            _ => 63,
        }
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c) << (18 - 6 * i);
        }
        let take = chunk.len() - 1;
        out.extend_from_slice(&n.to_be_bytes()[1..1 + take]);
    }
    out
}

/// Logs in on the form the page shows, as Ann (a requester).
async fn log_in_as_ann(driver: &Driver) {
    driver.type_into("#username", "ann").await;
    driver.type_into("#password", "ann-password-1234").await;
    driver.click("#login-btn").await;
    let who = driver
        .wait_text(
            "(document.getElementById('whoami')||{}).innerText",
            Duration::from_secs(10),
        )
        .await;
    assert!(
        who.contains("Ann Example") && who.contains("requester"),
        "{who}"
    );
}

async fn add_ann(app: &TestApp) {
    vmscan::identity::accounts::add_local_user(
        &app.store,
        "ann",
        vmscan::domain::Role::Requester,
        Some("ann-password-1234"),
        Some("ann@example.com".into()),
        Some("Ann Example".into()),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pastes_a_url_sees_the_popup_and_follows_the_job_page() {
    let Some(driver) = Driver::start().await else {
        return;
    };
    let images = tempfile::tempdir().unwrap();
    let image = images.path().join("template.raw");
    std::fs::write(&image, vec![1u8; 2_000_000]).unwrap();
    let root = images.path().to_path_buf();
    // The intake stages only: booting a VM is the e2e_local_vm tests' job.
    let app = TestApp::spawn(Backend::Sqlite, |c| {
        c.fetch.allowed_roots = vec![root];
        c.pipeline.stages = vmscan::pipeline::BUILT_STAGES[..5].to_vec();
    })
    .await;
    add_ann(&app).await;

    // Not logged in: the dashboard answers with the login form.
    driver.goto(&app.url("/")).await;
    driver.type_into("#username", "ann").await;
    driver.type_into("#password", "wrong-password-1").await;
    driver.click("#login-btn").await;
    let err = driver
        .wait_text(
            "(document.getElementById('login-error')||{}).innerText",
            Duration::from_secs(10),
        )
        .await;
    assert!(err.contains("wrong user name or password"), "{err}");
    driver
        .js("document.getElementById('username').value = ''; return null;")
        .await;
    log_in_as_ann(&driver).await;
    // A bad URL: the popup says exactly what is wrong.
    driver.type_into("#url", "ftp://files.example/x.img").await;
    driver.click("#submit-btn").await;
    let err = driver
        .wait_text(
            "(document.querySelector('.toast-error')||{}).innerText",
            Duration::from_secs(10),
        )
        .await;
    assert!(err.contains("unsupported URL scheme \"ftp\""), "{err}");

    // A good one: success popup with a link to the job, and the list shows it.
    driver
        .js("document.getElementById('url').value = ''; return null;")
        .await;
    driver
        .type_into("#url", &format!("file://{}", image.display()))
        .await;
    driver.click("#submit-btn").await;
    let ok = driver
        .wait_text(
            "(document.querySelector('.toast-success')||{}).innerText",
            Duration::from_secs(10),
        )
        .await;
    assert!(ok.contains("queued"), "{ok}");
    let href = driver.wait_text("(document.querySelector('.toast-success a')||{}).getAttribute && document.querySelector('.toast-success a').getAttribute('href')", Duration::from_secs(5)).await;
    assert!(href.starts_with("/jobs/"));
    driver
        .wait_text(
            "(document.querySelector('#job-table .job-row')||{}).innerText",
            Duration::from_secs(10),
        )
        .await;

    // The job page shows the stages and follows the job to its end.
    driver.goto(&app.url(&href)).await;
    let stages = driver
        .wait_text(
            "Array.from(document.querySelectorAll('.stage .name')).map(e => e.innerText).join(',')",
            Duration::from_secs(5),
        )
        .await;
    assert!(stages.starts_with("fetch,"), "{stages}");
    let facts = driver
        .wait_text(
            "(document.querySelector('.facts')||{}).innerText",
            Duration::from_secs(5),
        )
        .await;
    assert!(facts.contains("Ann Example ann"), "{facts}");
    let state = driver
        .wait_text("(s => s === 'succeeded' ? s : '')((document.getElementById('job-state')||{}).innerText)", Duration::from_secs(30))
        .await;
    assert_eq!(state, "succeeded");
    let log = driver
        .wait_text(
            "(t => t.includes('job succeeded') ? t : '')(document.getElementById('log').innerText)",
            Duration::from_secs(10),
        )
        .await;
    assert!(log.contains("[fetch]"), "{log}");
    if let Ok(dir) = std::env::var("VMSCAN_SCREENSHOT_DIR") {
        driver
            .screenshot(&std::path::Path::new(&dir).join("job-page.png"))
            .await;
        driver.goto(&app.url("/")).await;
        driver
            .screenshot(&std::path::Path::new(&dir).join("index.png"))
            .await;
    }
    app.stop().await;
}

/// The manifest upload: a bad file lists every error under the form and
/// queues nothing; a good one links its batch page, which follows the jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_a_manifest_and_follows_the_batch_page() {
    let Some(driver) = Driver::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for name in ["a.raw", "b.raw"] {
        std::fs::write(dir.path().join(name), vec![3u8; 500_000]).unwrap();
    }
    let url = |n: &str| format!("file://{}", dir.path().join(n).display());
    let root = dir.path().to_path_buf();
    let app = TestApp::spawn(Backend::Sqlite, |c| {
        c.fetch.allowed_roots = vec![root];
        c.pipeline.stages = vmscan::pipeline::BUILT_STAGES[..3].to_vec();
    })
    .await;
    add_ann(&app).await;
    driver.goto(&app.url("/")).await;
    log_in_as_ann(&driver).await;

    let bad = dir.path().join("bad.yml");
    std::fs::write(
        &bad,
        format!(
            "owner: web-team\nimages:\n  a:\n    get_url: {}\n    checksum: {{type: crc32, value: ab}}\n  b:\n    size: 20GB\n",
            url("a.raw")
        ),
    )
    .unwrap();
    driver
        .type_into("#manifest", &bad.display().to_string())
        .await;
    driver.click("#manifest-btn").await;
    let errors = driver
        .wait_text(
            "Array.from(document.querySelectorAll('#manifest-errors li')).map(e => e.innerText).join('\\n')",
            Duration::from_secs(10),
        )
        .await;
    assert!(
        errors.contains("images.a.checksum.type: unknown checksum algorithm \"crc32\"")
            && errors.contains("images.b.get_url: missing"),
        "{errors}"
    );
    let toast = driver
        .wait_text(
            "(document.querySelector('.toast-error')||{}).innerText",
            Duration::from_secs(5),
        )
        .await;
    assert!(toast.contains("nothing was queued"), "{toast}");
    let (_, jobs) = app.get("/api/v1/jobs").await;
    assert!(jobs["jobs"].as_array().unwrap().is_empty());

    let good = dir.path().join("good.yml");
    std::fs::write(
        &good,
        format!(
            "owner: web-team\nimages:\n  a:\n    get_url: {}\n  b:\n    get_url: {}\n",
            url("a.raw"),
            url("b.raw")
        ),
    )
    .unwrap();
    driver
        .type_into("#manifest", &good.display().to_string())
        .await;
    driver.click("#manifest-btn").await;
    let href = driver
        .wait_text(
            "(document.querySelector('.toast-success a')||{}).getAttribute && document.querySelector('.toast-success a').getAttribute('href')",
            Duration::from_secs(10),
        )
        .await;
    assert!(href.starts_with("/batches/"), "{href}");
    driver.goto(&app.url(&href)).await;
    let summary = driver
        .wait_text(
            "(t => t.includes('2 of 2 passed') ? t : '')((document.getElementById('batch-summary')||{}).innerText || '')",
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(summary, "2 of 2 passed");
    let keys = driver
        .wait_text(
            "Array.from(document.querySelectorAll('.batch-job')).map(e => e.dataset.key + ' ' + e.dataset.state).join(',')",
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(keys, "a succeeded,b succeeded");
    app.stop().await;
}
