//! WS-Management SOAP envelopes of the Windows remote shell (MS-WSMV), as
//! pywinrm and Windows' own winrs send them, and parsing of the answers.

use base64::Engine;

pub const NS_ENV: &str = "http://www.w3.org/2003/05/soap-envelope";
pub const NS_WSMAN: &str = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd";
pub const NS_SHELL: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell";
pub const NS_WSMANFAULT: &str = "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault";
pub const RESOURCE_CMD: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd";
pub const ACTION_CREATE: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create";
pub const ACTION_DELETE: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete";
pub const ACTION_COMMAND: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Command";
pub const ACTION_RECEIVE: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Receive";
pub const ACTION_SEND: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Send";
pub const ACTION_SIGNAL: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Signal";
pub const SIGNAL_TERMINATE: &str =
    "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/terminate";
pub const STATE_DONE: &str =
    "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Done";
/// The WSManFault code of a Receive that found no output within OperationTimeout.
pub const WSMAN_TIMED_OUT: &str = "2150858793";
pub const MAX_ENVELOPE_SIZE: usize = 153_600;

/// Escapes text for an XML element or attribute.
pub use crate::domain::escape_markup as escape;

/// One request's header fields.
pub struct Header<'a> {
    pub to: &'a str,
    pub action: &'a str,
    pub shell_id: Option<&'a str>,
    pub options: &'a [(&'a str, &'a str)],
    pub operation_timeout_secs: u64,
}

/// A whole envelope around `body` (the inside of `env:Body`).
pub fn envelope(h: &Header<'_>, body: &str) -> String {
    let mut s = String::with_capacity(2048 + body.len());
    s.push_str(concat!(
        r#"<?xml version="1.0" encoding="utf-8"?>"#,
        r#"<env:Envelope xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" "#,
        r#"xmlns:env="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" "#,
        r#"xmlns:b="http://schemas.dmtf.org/wbem/wsman/1/cimbinding.xsd" xmlns:n="http://schemas.xmlsoap.org/ws/2004/09/enumeration" "#,
        r#"xmlns:x="http://schemas.xmlsoap.org/ws/2004/09/transfer" xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" "#,
        r#"xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd" xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell" "#,
        r#"xmlns:cfg="http://schemas.microsoft.com/wbem/wsman/1/config"><env:Header>"#
    ));
    s.push_str(&format!("<a:To>{}</a:To>", escape(h.to)));
    s.push_str(r#"<a:ReplyTo><a:Address mustUnderstand="true">http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:Address></a:ReplyTo>"#);
    s.push_str(&format!(
        r#"<w:MaxEnvelopeSize mustUnderstand="true">{MAX_ENVELOPE_SIZE}</w:MaxEnvelopeSize>"#
    ));
    s.push_str(&format!(
        "<a:MessageID>uuid:{}</a:MessageID>",
        uuid::Uuid::now_v7().hyphenated().to_string().to_uppercase()
    ));
    s.push_str(r#"<w:Locale mustUnderstand="false" xml:lang="en-US"/><p:DataLocale mustUnderstand="false" xml:lang="en-US"/>"#);
    s.push_str(&format!(
        "<w:OperationTimeout>PT{}S</w:OperationTimeout>",
        h.operation_timeout_secs
    ));
    s.push_str(&format!(
        r#"<w:ResourceURI mustUnderstand="true">{RESOURCE_CMD}</w:ResourceURI><a:Action mustUnderstand="true">{}</a:Action>"#,
        h.action
    ));
    if let Some(id) = h.shell_id {
        s.push_str(&format!(
            r#"<w:SelectorSet><w:Selector Name="ShellId">{}</w:Selector></w:SelectorSet>"#,
            escape(id)
        ));
    }
    if !h.options.is_empty() {
        s.push_str("<w:OptionSet>");
        for (k, v) in h.options {
            s.push_str(&format!(r#"<w:Option Name="{k}">{v}</w:Option>"#));
        }
        s.push_str("</w:OptionSet>");
    }
    s.push_str("</env:Header><env:Body>");
    s.push_str(body);
    s.push_str("</env:Body></env:Envelope>");
    s
}

pub const CREATE_BODY: &str = "<rsp:Shell><rsp:InputStreams>stdin</rsp:InputStreams><rsp:OutputStreams>stdout stderr</rsp:OutputStreams></rsp:Shell>";

pub fn command_body(command: &str) -> String {
    format!(
        "<rsp:CommandLine><rsp:Command>{}</rsp:Command></rsp:CommandLine>",
        escape(command)
    )
}

pub fn receive_body(command_id: &str) -> String {
    format!(
        r#"<rsp:Receive><rsp:DesiredStream CommandId="{}">stdout stderr</rsp:DesiredStream></rsp:Receive>"#,
        escape(command_id)
    )
}

pub fn send_body(command_id: &str, data: &[u8], end: bool) -> String {
    let end = if end { r#" End="true""# } else { "" };
    format!(
        r#"<rsp:Send><rsp:Stream Name="stdin" CommandId="{}"{end}>{}</rsp:Stream></rsp:Send>"#,
        escape(command_id),
        base64::engine::general_purpose::STANDARD.encode(data)
    )
}

pub fn signal_body(command_id: &str) -> String {
    format!(
        r#"<rsp:Signal CommandId="{}"><rsp:Code>{SIGNAL_TERMINATE}</rsp:Code></rsp:Signal>"#,
        escape(command_id)
    )
}

/// A SOAP fault, with what Windows puts in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// `s:Code/s:Value` and `s:Subcode/s:Value`, e.g. `s:Sender`, `w:InvalidSelectors`.
    pub code: String,
    pub subcode: String,
    pub reason: String,
    /// `f:WSManFault/@Code`, e.g. 2150858793 for a timed-out Receive.
    pub wsman_code: String,
    /// `f:WSManFault/f:Message` (often more precise than the reason).
    pub message: String,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.code)?;
        if !self.subcode.is_empty() {
            write!(f, "/{}", self.subcode)?;
        }
        if !self.wsman_code.is_empty() {
            write!(f, " (WSManFault {})", self.wsman_code)?;
        }
        let text = if self.reason.is_empty() {
            &self.message
        } else {
            &self.reason
        };
        write!(
            f,
            ": {}",
            if text.is_empty() {
                "no reason given"
            } else {
                text
            }
        )?;
        if !self.message.is_empty() && self.message != self.reason && !self.reason.is_empty() {
            write!(f, " ({})", self.message)?;
        }
        Ok(())
    }
}

impl Fault {
    pub fn is_timed_out(&self) -> bool {
        self.wsman_code == WSMAN_TIMED_OUT || self.subcode.ends_with(":TimedOut")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unreadable WS-Management answer: {0}")]
pub struct ParseError(pub String);

fn parse(xml: &str) -> Result<roxmltree::Document<'_>, ParseError> {
    roxmltree::Document::parse(xml).map_err(|e| ParseError(e.to_string()))
}

fn is(n: &roxmltree::Node<'_, '_>, ns: &str, name: &str) -> bool {
    n.is_element() && n.tag_name().name() == name && n.tag_name().namespace() == Some(ns)
}

fn find<'a, 'i>(
    root: roxmltree::Node<'a, 'i>,
    ns: &str,
    name: &str,
) -> Option<roxmltree::Node<'a, 'i>> {
    root.descendants().find(|n| is(n, ns, name))
}

fn text_of(n: Option<roxmltree::Node<'_, '_>>) -> String {
    n.map(|n| {
        n.descendants()
            .filter(|d| d.is_text())
            .filter_map(|d| d.text())
            .collect::<String>()
    })
    .unwrap_or_default()
    .trim()
    .to_string()
}

/// The fault in a document, if it is one.
pub fn fault(xml: &str) -> Option<Fault> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let f = find(doc.root(), NS_ENV, "Fault")?;
    let code = find(f, NS_ENV, "Code");
    let subcode = code.and_then(|c| find(c, NS_ENV, "Subcode"));
    let code_value = code.and_then(|c| c.children().find(|n| is(n, NS_ENV, "Value")));
    let sub_value = subcode.and_then(|c| c.children().find(|n| is(n, NS_ENV, "Value")));
    let reason = find(f, NS_ENV, "Reason").and_then(|r| find(r, NS_ENV, "Text"));
    let wsman = find(f, NS_WSMANFAULT, "WSManFault");
    Some(Fault {
        code: text_of(code_value),
        subcode: text_of(sub_value),
        reason: text_of(reason),
        wsman_code: wsman
            .and_then(|w| w.attribute("Code"))
            .unwrap_or_default()
            .to_string(),
        message: text_of(wsman.and_then(|w| find(w, NS_WSMANFAULT, "Message"))),
    })
}

/// The ShellId of a Create answer.
pub fn shell_id(xml: &str) -> Result<String, ParseError> {
    let doc = parse(xml)?;
    let sel = doc
        .descendants()
        .find(|n| is(n, NS_WSMAN, "Selector") && n.attribute("Name") == Some("ShellId"))
        .or_else(|| find(doc.root(), NS_SHELL, "ShellId"));
    let id = text_of(sel);
    if id.is_empty() {
        return Err(ParseError("the Create answer has no ShellId".into()));
    }
    Ok(id)
}

/// The CommandId of a Command answer.
pub fn command_id(xml: &str) -> Result<String, ParseError> {
    let doc = parse(xml)?;
    let id = text_of(find(doc.root(), NS_SHELL, "CommandId"));
    if id.is_empty() {
        return Err(ParseError("the Command answer has no CommandId".into()));
    }
    Ok(id)
}

/// What one Receive returned.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Received {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub done: bool,
    pub exit_code: Option<i32>,
}

pub fn received(xml: &str) -> Result<Received, ParseError> {
    let doc = parse(xml)?;
    let resp = find(doc.root(), NS_SHELL, "ReceiveResponse")
        .ok_or_else(|| ParseError("the Receive answer has no ReceiveResponse".into()))?;
    let mut out = Received::default();
    for s in resp.children().filter(|n| is(n, NS_SHELL, "Stream")) {
        let text: String = text_of(Some(s)).split_whitespace().collect();
        if text.is_empty() {
            continue;
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(|e| ParseError(format!("a Stream is not base64: {e}")))?;
        match s.attribute("Name") {
            Some("stderr") => out.stderr.extend_from_slice(&bytes),
            _ => out.stdout.extend_from_slice(&bytes),
        }
    }
    if let Some(state) = find(resp, NS_SHELL, "CommandState") {
        out.done = state.attribute("State") == Some(STATE_DONE);
        let code = text_of(find(state, NS_SHELL, "ExitCode"));
        if !code.is_empty() {
            // Windows reports exit codes as unsigned 32-bit numbers.
            out.exit_code = code
                .parse::<i64>()
                .ok()
                .map(|c| c as u32 as i32)
                .or(Some(-1));
        }
    }
    Ok(out)
}

/// PowerShell writes its error stream as CLIXML when stderr is redirected;
/// this turns it back into the text a console would show.
pub fn decode_clixml(stderr: &str) -> String {
    let Some(xml) = stderr.trim_start().strip_prefix("#< CLIXML") else {
        return stderr.to_string();
    };
    let mut out = String::new();
    // Several documents may follow each other; parse each <Objs> separately.
    for part in xml.split("</Objs>") {
        let Some(start) = part.find("<Objs") else {
            continue;
        };
        let doc_text = format!("{}</Objs>", &part[start..]);
        let Ok(doc) = roxmltree::Document::parse(&doc_text) else {
            continue;
        };
        for s in doc
            .descendants()
            .filter(|n| n.tag_name().name() == "S" && n.attribute("S") == Some("Error"))
        {
            out.push_str(&unescape_ps(s.text().unwrap_or_default()));
        }
    }
    out
}

/// `_x000D__x000A_` style escapes of CLIXML strings.
fn unescape_ps(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("_x") {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let code = tail
            .get(2..6)
            .filter(|_| tail.get(6..7) == Some("_"))
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .and_then(char::from_u32);
        match code {
            Some(c) => {
                out.push(c);
                rest = &tail[7..];
            }
            None => {
                out.push_str("_x");
                rest = &tail[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // From pywinrm's winrm/tests/test_exceptions.py (MIT licence, (c) pywinrm contributors).
    const TIMED_OUT: &str = r#"<s:Envelope xml:lang="en-US" xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:x="http://schemas.xmlsoap.org/ws/2004/09/transfer" xmlns:e="http://schemas.xmlsoap.org/ws/2004/08/eventing" xmlns:n="http://schemas.xmlsoap.org/ws/2004/09/enumeration" xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd"><s:Header><a:Action>http://schemas.dmtf.org/wbem/wsman/1/wsman/fault</a:Action><a:MessageID>uuid:EE71C444-1658-4B3F-916D-54CE43B68BC9</a:MessageID><a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To><a:RelatesTo>uuid:11111111-1111-1111-1111-111111111111</a:RelatesTo></s:Header><s:Body><s:Fault><s:Code><s:Value>s:Receiver</s:Value><s:Subcode><s:Value>w:TimedOut</s:Value></s:Subcode></s:Code><s:Reason><s:Text xml:lang="en-US">The WS-Management service cannot complete the operation within the time specified in OperationTimeout.  </s:Text></s:Reason><s:Detail><f:WSManFault xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault" Code="2150858793" Machine="windows-host"><f:Message>The WS-Management service cannot complete the operation within the time specified in OperationTimeout.  </f:Message></f:WSManFault></s:Detail></s:Fault></s:Body></s:Envelope>"#;

    #[test]
    fn reads_a_timed_out_fault() {
        let f = fault(TIMED_OUT).unwrap();
        assert_eq!(f.code, "s:Receiver");
        assert_eq!(f.subcode, "w:TimedOut");
        assert!(f.is_timed_out());
        assert!(f.to_string().starts_with(
            "s:Receiver/w:TimedOut (WSManFault 2150858793): The WS-Management service cannot"
        ));
        assert!(fault("<a/>").is_none());
    }

    #[test]
    fn reads_streams_and_the_exit_code() {
        let xml = r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell"><s:Body><rsp:ReceiveResponse><rsp:Stream Name="stdout" CommandId="1">aGVsbG8K</rsp:Stream><rsp:Stream Name="stderr" CommandId="1">b29wcw==</rsp:Stream><rsp:Stream Name="stdout" CommandId="1" End="true"></rsp:Stream><rsp:CommandState CommandId="1" State="http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Done"><rsp:ExitCode>4294967295</rsp:ExitCode></rsp:CommandState></rsp:ReceiveResponse></s:Body></s:Envelope>"#;
        let r = received(xml).unwrap();
        assert_eq!(r.stdout, b"hello\n");
        assert_eq!(r.stderr, b"oops");
        assert!(r.done);
        assert_eq!(r.exit_code, Some(-1));
    }

    #[test]
    fn decodes_powershell_clixml_errors() {
        let s = "#< CLIXML\r\n<Objs Version=\"1.1.0.1\" xmlns=\"http://schemas.microsoft.com/powershell/2004/04\"><S S=\"Error\">Cannot find path_x000D__x000A_</S><S S=\"Error\">second_x000A_</S></Objs>";
        assert_eq!(decode_clixml(s), "Cannot find path\r\nsecond\n");
        assert_eq!(decode_clixml("plain"), "plain");
    }

    /// Elements as comparable lines (namespace, name, attributes, text), with
    /// the values that legitimately differ per message blanked.
    fn shape(xml: &str) -> Vec<String> {
        let doc = roxmltree::Document::parse(xml).unwrap();
        let mut out: Vec<String> = doc
            .descendants()
            .filter(|n| n.is_element())
            .map(|n| {
                let name = n.tag_name().name();
                let mut attrs: Vec<String> = n
                    .attributes()
                    .map(|a| {
                        let v = if a.name() == "CommandId" {
                            "*"
                        } else {
                            a.value()
                        };
                        format!("{}={v}", a.name())
                    })
                    .collect();
                attrs.sort();
                let text = match (name, n.attribute("Name")) {
                    ("MessageID" | "OperationTimeout" | "To" | "Selector", _) => "*".to_string(),
                    ("Option", Some("WINRS_CODEPAGE")) => "*".to_string(),
                    _ => n.text().unwrap_or_default().trim().to_string(),
                };
                format!(
                    "{}|{name}|{}|{text}",
                    n.tag_name().namespace().unwrap_or_default(),
                    attrs.join(",")
                )
            })
            .collect();
        out.sort();
        out
    }

    fn ours(action: &str, shell: Option<&str>, options: &[(&str, &str)], body: &str) -> String {
        envelope(
            &Header {
                to: "http://10.0.0.5:5985/wsman",
                action,
                shell_id: shell,
                options,
                operation_timeout_secs: 20,
            },
            body,
        )
    }

    // pywinrm's recorded requests (winrm/tests/conftest.py; MIT licence,
    // (c) pywinrm contributors), with the per-message values blanked by `shape`.
    const PYWINRM_HEADER: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<env:Envelope xmlns:x="http://schemas.xmlsoap.org/ws/2004/09/transfer" xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" xmlns:cfg="http://schemas.microsoft.com/wbem/wsman/1/config" xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd" xmlns:n="http://schemas.xmlsoap.org/ws/2004/09/enumeration" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:env="http://www.w3.org/2003/05/soap-envelope" xmlns:b="http://schemas.dmtf.org/wbem/wsman/1/cimbinding.xsd" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing">
  <env:Header>
    <a:To>http://windows-host:5985/wsman</a:To>
    <a:ReplyTo>
      <a:Address mustUnderstand="true">http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:Address>
    </a:ReplyTo>
    <w:MaxEnvelopeSize mustUnderstand="true">153600</w:MaxEnvelopeSize>
    <a:MessageID>uuid:11111111-1111-1111-1111-111111111111</a:MessageID>
    <w:Locale mustUnderstand="false" xml:lang="en-US" />
    <p:DataLocale mustUnderstand="false" xml:lang="en-US" />
    <w:OperationTimeout>PT60S</w:OperationTimeout>
    <w:ResourceURI mustUnderstand="true">http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd</w:ResourceURI>
"#;

    fn pywinrm(action: &str, rest: &str) -> String {
        format!("{PYWINRM_HEADER}    <a:Action mustUnderstand=\"true\">{action}</a:Action>\n{rest}")
    }

    const SHELL_SELECTOR: &str = "    <w:SelectorSet>\n      <w:Selector Name=\"ShellId\">11111111-1111-1111-1111-111111111113</w:Selector>\n    </w:SelectorSet>\n";

    #[test]
    fn requests_have_the_shape_pywinrm_recorded() {
        let create = pywinrm(
            ACTION_CREATE,
            "    <w:OptionSet>\n      <w:Option Name=\"WINRS_NOPROFILE\">FALSE</w:Option>\n      <w:Option Name=\"WINRS_CODEPAGE\">437</w:Option>\n    </w:OptionSet>\n  </env:Header>\n  <env:Body>\n    <rsp:Shell>\n      <rsp:InputStreams>stdin</rsp:InputStreams>\n      <rsp:OutputStreams>stdout stderr</rsp:OutputStreams>\n    </rsp:Shell>\n  </env:Body>\n</env:Envelope>",
        );
        let opts = [("WINRS_NOPROFILE", "FALSE"), ("WINRS_CODEPAGE", "65001")];
        assert_eq!(
            shape(&ours(ACTION_CREATE, None, &opts, CREATE_BODY)),
            shape(&create)
        );

        let command = pywinrm(
            ACTION_COMMAND,
            &format!("{SHELL_SELECTOR}    <w:OptionSet>\n      <w:Option Name=\"WINRS_CONSOLEMODE_STDIN\">TRUE</w:Option>\n      <w:Option Name=\"WINRS_SKIP_CMD_SHELL\">FALSE</w:Option>\n    </w:OptionSet>\n  </env:Header>\n  <env:Body>\n    <rsp:CommandLine>\n      <rsp:Command>hostname</rsp:Command>\n    </rsp:CommandLine>\n  </env:Body>\n</env:Envelope>"),
        );
        let opts = [
            ("WINRS_CONSOLEMODE_STDIN", "TRUE"),
            ("WINRS_SKIP_CMD_SHELL", "FALSE"),
        ];
        assert_eq!(
            shape(&ours(
                ACTION_COMMAND,
                Some("s1"),
                &opts,
                &command_body("hostname")
            )),
            shape(&command)
        );

        let receive = pywinrm(
            ACTION_RECEIVE,
            &format!("{SHELL_SELECTOR}  </env:Header>\n  <env:Body>\n    <rsp:Receive>\n      <rsp:DesiredStream CommandId=\"11111111-1111-1111-1111-111111111114\">stdout stderr</rsp:DesiredStream>\n    </rsp:Receive>\n  </env:Body>\n</env:Envelope>"),
        );
        assert_eq!(
            shape(&ours(ACTION_RECEIVE, Some("s1"), &[], &receive_body("c1"))),
            shape(&receive)
        );

        let signal = pywinrm(
            ACTION_SIGNAL,
            &format!("{SHELL_SELECTOR}  </env:Header>\n  <env:Body>\n    <rsp:Signal CommandId=\"11111111-1111-1111-1111-111111111114\">\n      <rsp:Code>http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/terminate</rsp:Code>\n    </rsp:Signal>\n  </env:Body>\n</env:Envelope>"),
        );
        assert_eq!(
            shape(&ours(ACTION_SIGNAL, Some("s1"), &[], &signal_body("c1"))),
            shape(&signal)
        );

        let delete = pywinrm(
            ACTION_DELETE,
            &format!(
                "{SHELL_SELECTOR}  </env:Header>\n  <env:Body>\n  </env:Body>\n</env:Envelope>"
            ),
        );
        assert_eq!(
            shape(&ours(ACTION_DELETE, Some("s1"), &[], "")),
            shape(&delete)
        );
    }

    #[test]
    fn reads_pywinrm_recorded_answers() {
        let created = r#"<?xml version="1.0" ?>
<s:Envelope xml:lang="en-US" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd" xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell" xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" xmlns:x="http://schemas.xmlsoap.org/ws/2004/09/transfer">
    <s:Header>
        <a:Action>http://schemas.xmlsoap.org/ws/2004/09/transfer/CreateResponse</a:Action>
        <a:MessageID>uuid:11111111-1111-1111-1111-111111111112</a:MessageID>
        <a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>
        <a:RelatesTo>uuid:11111111-1111-1111-1111-111111111111</a:RelatesTo>
    </s:Header>
    <s:Body>
        <x:ResourceCreated>
            <a:Address>http://windows-host:5985/wsman</a:Address>
            <a:ReferenceParameters>
                <w:ResourceURI>http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd</w:ResourceURI>
                <w:SelectorSet>
                    <w:Selector Name="ShellId">11111111-1111-1111-1111-111111111113</w:Selector>
                </w:SelectorSet>
            </a:ReferenceParameters>
        </x:ResourceCreated>
    </s:Body>
</s:Envelope>"#;
        assert_eq!(
            shell_id(created).unwrap(),
            "11111111-1111-1111-1111-111111111113"
        );
        let command = r#"<?xml version="1.0" ?>
<s:Envelope xml:lang="en-US" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell" xmlns:s="http://www.w3.org/2003/05/soap-envelope">
    <s:Body>
        <rsp:CommandResponse>
            <rsp:CommandId>11111111-1111-1111-1111-111111111114</rsp:CommandId>
        </rsp:CommandResponse>
    </s:Body>
</s:Envelope>"#;
        assert_eq!(
            command_id(command).unwrap(),
            "11111111-1111-1111-1111-111111111114"
        );
    }

    #[test]
    fn escapes_command_lines() {
        assert_eq!(
            command_body("a<b & 'c'"),
            "<rsp:CommandLine><rsp:Command>a&lt;b &amp; &apos;c&apos;</rsp:Command></rsp:CommandLine>"
        );
    }
}
