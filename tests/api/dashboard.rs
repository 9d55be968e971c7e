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
        // The whole page, not only the window: grow the window to fit it.
        let h = self
            .js("return Math.min(6000, document.documentElement.scrollHeight);")
            .await
            .as_i64()
            .unwrap_or(1000);
        self.cmd(
            reqwest::Method::POST,
            "/window/rect",
            json!({"width": 1280, "height": h.max(600)}),
        )
        .await;
        let v = self
            .cmd(reqwest::Method::GET, "/screenshot", json!({}))
            .await;
        std::fs::write(path, b64(v.as_str().unwrap())).unwrap();
        self.cmd(
            reqwest::Method::POST,
            "/window/rect",
            json!({"width": 1280, "height": 1000}),
        )
        .await;
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

/// Every page a user relies on, in the browser: the job list (its columns
/// and filters), job pages of a succeeded, a failed, a waiting (parked) and
/// a running job (pipeline strip, timeline, stage sentences, log tools,
/// resources), the catalog and the insights page. With
/// `VMSCAN_SCREENSHOT_DIR` set (scripts/screenshots.sh) it saves each page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walks_every_page_a_user_relies_on() {
    use crate::support::fileserver::{Behaviour, FileServer};
    use vmscan::domain::StageName;
    let Some(driver) = Driver::start().await else {
        return;
    };
    let images = tempfile::tempdir().unwrap();
    let image = images.path().join("rocky-9.4.raw");
    std::fs::write(&image, vec![1u8; 2_000_000]).unwrap();
    let root = images.path().to_path_buf();
    let slow_dir = tempfile::tempdir().unwrap();
    std::fs::write(slow_dir.path().join("big.raw"), vec![2u8; 8_000_000]).unwrap();
    let slow = FileServer::start(slow_dir.path()).await;
    slow.set(Behaviour {
        rate: 40_000,
        ..Default::default()
    });
    let busy_dir = tempfile::tempdir().unwrap();
    let busy = FileServer::start(busy_dir.path()).await;
    busy.set(Behaviour {
        status: Some(503),
        ..Default::default()
    });
    let app = TestApp::spawn(Backend::Sqlite, |c| {
        c.fetch.allowed_roots = vec![root];
        c.worker.pool_size = 3;
        c.pipeline.retry_limit = 3;
        c.pipeline.retry_backoff_secs = 900;
        c.pipeline.stages = vec![
            StageName::Fetch,
            StageName::Extract,
            StageName::Checksum,
            StageName::Inspect,
            StageName::Convert,
            StageName::Publish,
        ];
    })
    .await;
    add_ann(&app).await;
    let url = format!("file://{}", image.display());
    let ok = app
        .submit(json!({"url": url, "name": "rocky", "version": "9.4", "note": "nightly golden"}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let bad = app
        .submit(json!({"url": url, "name": "rocky", "version": "9.5", "checksum": format!("sha256:{}", "0".repeat(64))}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.wait_final(&ok, Duration::from_secs(60)).await;
    app.wait_final(&bad, Duration::from_secs(60)).await;
    let waiting = app.submit(json!({"url": busy.url("gone.raw")})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let running = app.submit(json!({"url": slow.url("big.raw")})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let shots = std::env::var("VMSCAN_SCREENSHOT_DIR")
        .ok()
        .map(std::path::PathBuf::from);
    let shot = |name: &'static str| {
        let p = shots.as_ref().map(|d| d.join(name));
        let d = &driver;
        async move {
            if let Some(p) = p {
                d.screenshot(&p).await;
            }
        }
    };

    driver.goto(&app.url("/")).await;
    log_in_as_ann(&driver).await;
    // The job list: image name and version, cluster, OS and result columns.
    let row = driver
        .wait_text(
            &format!("(document.querySelector('.job-row[data-id=\"{ok}\"]')||{{}}).innerText"),
            Duration::from_secs(10),
        )
        .await;
    assert!(
        row.contains("rocky")
            && row.contains("9.4")
            && row.contains("qemu-local")
            && row.contains("succeeded"),
        "{row}"
    );
    let heads = driver
        .js("return Array.from(document.querySelectorAll('table.jobs th')).map(e => e.innerText).join(',');")
        .await;
    assert_eq!(
        heads.as_str().unwrap(),
        "Job,Image,Version,Requested by,Cluster,OS,Stage,Age,Duration,Result"
    );
    shot("dashboard.png").await;
    // Filters: text search over name/version/note, and state.
    driver.type_into("#f-q", "nightly").await;
    driver.click("#f-apply").await;
    let rows = driver
        .wait_text(
            "(u => u.includes('q=nightly') ? Array.from(document.querySelectorAll('.job-row')).map(r => r.dataset.id).join(',') : '')(location.search)",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        rows, ok,
        "search 'nightly' finds the one job with that note"
    );
    driver.goto(&app.url("/?state=failed")).await;
    let rows = driver
        .wait_text(
            "Array.from(document.querySelectorAll('.job-row')).map(r => r.dataset.id).join(',')",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(rows, bad);

    // A succeeded job: the strip, the timeline, sentences, the log tools.
    driver.goto(&app.url(&format!("/jobs/{ok}"))).await;
    let strip = driver
        .wait_text(
            "Array.from(document.querySelectorAll('#pipeline .pstage')).map(e => e.dataset.stage + ':' + e.dataset.state).join(',')",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        strip,
        "fetch:succeeded,extract:succeeded,checksum:succeeded,inspect:succeeded,convert:succeeded,publish:succeeded"
    );
    let bars = driver
        .js("return document.querySelectorAll('#timeline .gbar.state-succeeded').length;")
        .await;
    assert_eq!(bars.as_i64(), Some(6), "one timeline bar per stage run");
    let sentences = driver
        .js("return Array.from(document.querySelectorAll('.stage .summary')).map(e => e.innerText).join('\\n');")
        .await;
    let sentences = sentences.as_str().unwrap();
    assert!(
        sentences.contains("downloaded 1.9 MiB")
            && sentences.contains("NOT verified")
            && sentences.contains("published rocky 9.4"),
        "{sentences}"
    );
    // Internal paths only behind the details toggle.
    let visible = driver
        .js("return document.getElementById('stages').innerText;")
        .await;
    assert!(!visible.as_str().unwrap().contains("/jobs/"), "{visible}");
    driver.type_into("#log-search", "job succeeded").await;
    let count = driver
        .wait_text(
            "(t => / of /.test(t) ? t : '')(document.getElementById('log-count').innerText)",
            Duration::from_secs(5),
        )
        .await;
    assert!(count.starts_with("1 of "), "{count}");
    let marked = driver
        .js("return document.querySelector('#log mark').innerText;")
        .await;
    assert_eq!(marked.as_str(), Some("job succeeded"));
    let href = driver
        .js("return document.getElementById('log-download').getAttribute('href');")
        .await;
    let (status, text) = app.get_text(href.as_str().unwrap()).await;
    assert_eq!(status, 200);
    assert!(
        text.contains("[fetch] info") && text.contains("job succeeded"),
        "{text}"
    );
    shot("job-succeeded.png").await;
    // Its scan report, linked from the page, readable on its own.
    let report = driver
        .js("return document.getElementById('report-html').getAttribute('href');")
        .await;
    driver.goto(&app.url(report.as_str().unwrap())).await;
    let text = driver
        .wait_text("document.body.innerText", Duration::from_secs(5))
        .await;
    assert!(
        text.contains("rocky") && text.contains("9.4") && text.contains("sha256"),
        "{text}"
    );
    shot("report.png").await;

    // A failed job: the failed box, its error, the stages it never reached.
    driver.goto(&app.url(&format!("/jobs/{bad}"))).await;
    let strip = driver
        .wait_text(
            "Array.from(document.querySelectorAll('#pipeline .pstage')).map(e => e.dataset.state).join(',')",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(strip, "succeeded,succeeded,failed,skipped,skipped,skipped");
    let err = driver
        .js("return document.querySelector('.stage.state-failed .error').innerText;")
        .await;
    assert!(err.as_str().unwrap().contains("mismatch"), "{err}");
    shot("job-failed.png").await;

    // A waiting job: parked fetch with a live countdown to its next check.
    let text = app
        .wait_for(&waiting, Duration::from_secs(20), |j| {
            j["state"] == "waiting"
        })
        .await;
    assert_eq!(text["state"], "waiting");
    driver.goto(&app.url(&format!("/jobs/{waiting}"))).await;
    let countdown = driver
        .wait_text(
            "(t => t.startsWith('next check in') ? t : '')((document.querySelector('#pipeline .countdown')||{}).innerText || '')",
            Duration::from_secs(5),
        )
        .await;
    assert!(countdown.contains("m "), "{countdown}");
    shot("job-waiting.png").await;

    // A running job: a spinner on its stage, the log following it.
    driver.goto(&app.url(&format!("/jobs/{running}"))).await;
    driver
        .wait_text(
            "(document.querySelector('#pipeline .pstage.state-running .spinner') ? 'yes' : '')",
            Duration::from_secs(20),
        )
        .await;
    let sentence = driver
        .wait_text(
            "(t => t.startsWith('downloading') ? t : '')((document.querySelector('.stage.state-running .summary')||{}).innerText || '')",
            Duration::from_secs(10),
        )
        .await;
    assert!(sentence.contains(" of 7.6 MiB"), "{sentence}");
    shot("job-running.png").await;

    // The catalog, and the insights page.
    driver.goto(&app.url("/images")).await;
    let catalog = driver
        .wait_text(
            "document.querySelector('main').innerText",
            Duration::from_secs(5),
        )
        .await;
    assert!(catalog.contains("rocky"), "{catalog}");
    shot("images.png").await;
    driver.goto(&app.url("/insights")).await;
    let kpi = driver
        .wait_text(
            "(document.getElementById('kpi-failed')||{}).innerText",
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(kpi, "1");
    let charts = driver
        .js("return Array.from(document.querySelectorAll('svg.chart')).map(e => e.id).join(',');")
        .await;
    assert_eq!(
        charts.as_str().unwrap(),
        "chart-outcomes,chart-failed-stages,chart-errors,chart-queue"
    );
    let bars = driver
        .js("return document.querySelectorAll('#chart-outcomes rect').length;")
        .await;
    assert_eq!(bars.as_i64(), Some(2), "today: one succeeded, one failed");
    shot("insights.png").await;
    app.stop().await;
}
