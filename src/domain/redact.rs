//! The one URL redaction every page, log line, email, ticket and published
//! record goes through: user-info and secret-looking query parameters.

use url::Url;

const HIDDEN: &str = "***";

/// Query parameter names whose values are credentials: presigned S3
/// (`X-Amz-Signature`, `X-Amz-Credential`, `X-Amz-Security-Token`, v2
/// `Signature`/`AWSAccessKeyId`), GCS (`X-Goog-*`), Azure SAS (`sig`), and the
/// usual token/key/password names. Over-redacting a harmless `monkey=` is fine.
fn is_secret_param(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.starts_with("x-amz-")
        || n.starts_with("x-goog-")
        || matches!(n.as_str(), "sig" | "key" | "auth" | "code" | "pass" | "pwd")
        || [
            "signature",
            "token",
            "password",
            "passwd",
            "secret",
            "credential",
            "apikey",
            "api_key",
            "accesskey",
            "access_key",
            "session",
        ]
        .iter()
        .any(|s| n.contains(s))
        || n.ends_with("key")
        || n.ends_with("_sig")
}

/// `https://bob:pw@h/x?X-Amz-Signature=ab&v=1` → `https://***:***@h/x?X-Amz-Signature=***&v=1`.
/// Also handles checksum specs (`file:https://…`) and text that is not a URL.
pub fn redact_url(input: &str) -> String {
    // A checksum spec `file:URL` wraps a URL: redact the inner one.
    if let Some(inner) = input.strip_prefix("file:").filter(|r| !r.starts_with("//")) {
        return format!("file:{}", redact_url(inner));
    }
    match Url::parse(input) {
        Ok(u) if !u.cannot_be_a_base() => redact_parsed(u),
        _ => redact_text(input),
    }
}

fn redact_parsed(mut u: Url) -> String {
    if !u.username().is_empty() {
        let _ = u.set_username(HIDDEN);
    }
    if u.password().is_some() {
        let _ = u.set_password(Some(HIDDEN));
    }
    if let Some(q) = u.query() {
        if q.split('&').any(|kv| is_secret_param(&param_name(kv))) {
            let redacted = redact_query(q);
            u.set_query(Some(&redacted));
        }
    }
    u.to_string()
}

fn param_name(kv: &str) -> String {
    let name = kv.split('=').next().unwrap_or("");
    // `X%2DAmz%2DSignature` must not slip through.
    percent_encoding_decode(name)
}

fn redact_query(q: &str) -> String {
    q.split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if is_secret_param(&param_name(kv)) => format!("{k}={HIDDEN}"),
            _ => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// For strings no URL parser accepts: hide `//user:pass@` and secret `name=value` pairs.
fn redact_text(s: &str) -> String {
    let mut out = s.to_string();
    if let Some(start) = out.find("://").map(|i| i + 3) {
        let end = out[start..]
            .find(['/', '?', '#'])
            .map_or(out.len(), |i| start + i);
        if let Some(at) = out[start..end].rfind('@') {
            out.replace_range(start..start + at, &format!("{HIDDEN}:{HIDDEN}"));
        }
    }
    match out.split_once('?') {
        Some((head, q)) if q.split('&').any(|kv| is_secret_param(&param_name(kv))) => {
            format!("{head}?{}", redact_query(q))
        }
        _ => out,
    }
}

fn percent_encoding_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn hides_user_info_and_signed_url_secrets() {
        let cases = [
            (
                "https://bob:s3cret@filer.example/img/disk.qcow2",
                "https://***:***@filer.example/img/disk.qcow2",
            ),
            (
                "https://b.s3.amazonaws.com/d.img?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F1&X-Amz-Signature=abcd&x-id=GetObject",
                "https://b.s3.amazonaws.com/d.img?X-Amz-Algorithm=***&X-Amz-Credential=***&X-Amz-Signature=***&x-id=GetObject",
            ),
            (
                "https://acct.blob.core.windows.net/c/d.vhd?sv=2022-11-02&se=2030-01-01&sp=r&sig=Zm9v%3D",
                "https://acct.blob.core.windows.net/c/d.vhd?sv=2022-11-02&se=2030-01-01&sp=r&sig=***",
            ),
            (
                "https://storage.googleapis.com/b/o.img?X-Goog-Signature=ff&X-Goog-Date=1",
                "https://storage.googleapis.com/b/o.img?X-Goog-Signature=***&X-Goog-Date=***",
            ),
            (
                "https://h.example/x.img?token=t1&key=k&password=p&access_token=a&api_key=b&plain=1",
                "https://h.example/x.img?token=***&key=***&password=***&access_token=***&api_key=***&plain=1",
            ),
            (
                "file:https://u:pw@h.example/SHA256SUMS?Signature=s",
                "file:https://***:***@h.example/SHA256SUMS?Signature=***",
            ),
            (
                "sftp://root:hunter2@filer/exports/a.vmdk",
                "sftp://***:***@filer/exports/a.vmdk",
            ),
            ("postgres://vm:hunter2@db/vmscan", "postgres://***:***@db/vmscan"),
            ("/srv/images/a.raw", "/srv/images/a.raw"),
            ("https://h.example/a.img?v=1", "https://h.example/a.img?v=1"),
        ];
        for (input, want) in cases {
            assert_eq!(redact_url(input), want, "{input}");
        }
    }

    #[test]
    fn hides_secrets_in_text_that_is_not_a_url() {
        let got = redact_url("http://u:p@[bad/x?X%2DAmz%2DSignature=zz&a=1");
        assert!(!got.contains(":p@") && !got.contains("zz"), "{got}");
        assert!(got.ends_with("&a=1"), "{got}");
    }
}
