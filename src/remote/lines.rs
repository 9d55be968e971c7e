//! Turns a remote command's output chunks into whole lines for the job log,
//! and keeps a capped copy of the output.

/// A line longer than this is passed on in pieces, so output without
/// newlines (a progress bar, binary junk) cannot grow the buffer unbounded.
pub const MAX_LINE: usize = 64 * 1024;

/// Splits chunks at `\n` (dropping a `\r` before it); a partial line waits
/// for the next chunk. Bytes are split before decoding, so a UTF-8 character
/// cut between two chunks still comes out whole.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    pub fn push(&mut self, chunk: &[u8], mut emit: impl FnMut(&str)) {
        let mut rest = chunk;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&rest[..i]);
            rest = &rest[i + 1..];
            Self::emit_line(&mut self.partial, &mut emit);
        }
        self.partial.extend_from_slice(rest);
        while self.partial.len() >= MAX_LINE {
            let tail = self.partial.split_off(MAX_LINE);
            emit(&String::from_utf8_lossy(&self.partial));
            self.partial = tail;
        }
    }

    /// Passes on a last line that had no newline.
    pub fn finish(&mut self, mut emit: impl FnMut(&str)) {
        if !self.partial.is_empty() {
            Self::emit_line(&mut self.partial, &mut emit);
        }
    }

    fn emit_line(buf: &mut Vec<u8>, emit: &mut impl FnMut(&str)) {
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        emit(&String::from_utf8_lossy(buf));
        buf.clear();
    }
}

/// Keeps the first `cap` bytes of a stream and counts the rest.
#[derive(Debug)]
pub struct CappedBuf {
    cap: usize,
    bytes: Vec<u8>,
    dropped: u64,
}

impl CappedBuf {
    pub fn new(cap: usize) -> Self {
        CappedBuf {
            cap,
            bytes: Vec::new(),
            dropped: 0,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        let room = self.cap.saturating_sub(self.bytes.len());
        let take = room.min(chunk.len());
        self.bytes.extend_from_slice(&chunk[..take]);
        self.dropped += (chunk.len() - take) as u64;
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Lossy text, with a note when bytes were left out.
    pub fn into_text(self) -> String {
        let mut text = String::from_utf8_lossy(&self.bytes).into_owned();
        if self.dropped > 0 {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&format!(
                "[vmscan: {} more bytes not kept; only the first {} bytes are stored]\n",
                self.dropped, self.cap
            ));
        }
        text
    }
}

/// What the `run` wrapper writes to stderr before the command starts, followed
/// by the shell's pid, so a timed-out command can be killed.
pub const PID_MARKER: &[u8] = b"vmscan-session-pid=";

/// Takes the wrapper's pid line out of stderr and passes the rest through.
/// Anything the login shell printed before it (a noisy `.bashrc`) is kept.
#[derive(Debug)]
pub struct PidFilter {
    pending: Option<Vec<u8>>,
    pid: Option<u32>,
}

impl PidFilter {
    pub fn new(active: bool) -> Self {
        PidFilter {
            pending: active.then(Vec::new),
            pid: None,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The part of `chunk` (with what was held back) that is the command's stderr.
    pub fn push<'a>(&mut self, chunk: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        use std::borrow::Cow;
        let Some(pending) = self.pending.as_mut() else {
            return Cow::Borrowed(chunk);
        };
        pending.extend_from_slice(chunk);
        let mut from = 0;
        while let Some(i) = find(&pending[from..], PID_MARKER).map(|i| i + from) {
            let at_line_start = i == 0 || pending[i - 1] == b'\n';
            let Some(nl) = pending[i..].iter().position(|&b| b == b'\n').map(|n| n + i) else {
                return Cow::Borrowed(&[]); // the rest of the line is still coming
            };
            if at_line_start {
                let digits = &pending[i + PID_MARKER.len()..nl];
                self.pid = std::str::from_utf8(digits)
                    .ok()
                    .and_then(|d| d.trim().parse().ok());
                let mut rest = pending[..i].to_vec();
                rest.extend_from_slice(&pending[nl + 1..]);
                self.pending = None;
                return Cow::Owned(rest);
            }
            from = i + 1;
        }
        if pending.len() > MAX_LINE {
            return Cow::Owned(self.finish());
        }
        Cow::Borrowed(&[])
    }

    /// Gives back what was held when no pid line came.
    pub fn finish(&mut self) -> Vec<u8> {
        self.pending.take().unwrap_or_default()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut out = Vec::new();
        let mut s = LineSplitter::default();
        for c in chunks {
            s.push(c, |l| out.push(l.to_string()));
        }
        s.finish(|l| out.push(l.to_string()));
        out
    }

    #[test]
    fn joins_a_line_cut_between_chunks() {
        assert_eq!(split(&[b"hel", b"lo\nwor", b"ld\n"]), ["hello", "world"]);
    }

    #[test]
    fn several_lines_in_one_chunk_come_out_in_order() {
        assert_eq!(split(&[b"a\nb\nc\n"]), ["a", "b", "c"]);
    }

    #[test]
    fn keeps_empty_lines_and_drops_carriage_returns() {
        assert_eq!(split(&[b"a\r\n\r\n", b"\nb\r", b"\n"]), ["a", "", "", "b"]);
    }

    #[test]
    fn last_line_without_newline_is_flushed_at_the_end() {
        assert_eq!(split(&[b"done\nno newline"]), ["done", "no newline"]);
        assert!(split(&[b""]).is_empty());
    }

    #[test]
    fn utf8_character_split_across_chunks_stays_whole() {
        let text = "grüße\n".as_bytes();
        let (a, b) = text.split_at(3); // inside 'ü'
        assert_eq!(split(&[a, b]), ["grüße"]);
    }

    #[test]
    fn endless_line_is_passed_on_in_pieces() {
        let big = vec![b'x'; MAX_LINE * 2 + 10];
        let lines = split(&[&big[..100], &big[100..], b"\n"]);
        assert_eq!(
            lines.iter().map(|l| l.len()).collect::<Vec<_>>(),
            [MAX_LINE, MAX_LINE, 10]
        );
    }

    #[test]
    fn capped_buffer_keeps_the_head_and_says_what_it_dropped() {
        let mut b = CappedBuf::new(5);
        b.push(b"abc");
        b.push(b"defgh");
        let text = b.into_text();
        assert!(
            text.starts_with("abcde\n[vmscan: 3 more bytes not kept"),
            "{text}"
        );
        let mut b = CappedBuf::new(5);
        b.push(b"ab");
        assert_eq!(b.into_text(), "ab");
    }

    #[test]
    fn pid_line_is_taken_out_of_stderr_even_when_split() {
        let mut f = PidFilter::new(true);
        assert!(f.push(b"bashrc noise\nvmscan-sess").is_empty());
        assert!(f.push(b"ion-pid=4").is_empty());
        assert_eq!(&*f.push(b"21\nreal error\n"), b"bashrc noise\nreal error\n");
        assert_eq!(f.pid(), Some(421));
        assert_eq!(
            &*f.push(b"vmscan-session-pid=9\n"),
            b"vmscan-session-pid=9\n"
        );
        assert_eq!(f.pid(), Some(421));
    }

    #[test]
    fn stderr_without_a_pid_line_is_given_back() {
        let mut f = PidFilter::new(true);
        assert!(f.push(b"x vmscan-session-pid=1\n").is_empty());
        assert_eq!(f.finish(), b"x vmscan-session-pid=1\n");
        assert_eq!(f.pid(), None);
        let mut off = PidFilter::new(false);
        assert_eq!(
            &*off.push(b"vmscan-session-pid=1\n"),
            b"vmscan-session-pid=1\n"
        );
    }
}
