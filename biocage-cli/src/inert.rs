//! Text from the sandbox, shown inertly on a terminal.
//!
//! Everything the sandbox produces (stdout, stderr, the value of the last expression,
//! tracebacks, error messages, file names) is untrusted: written raw to a terminal, an
//! escape sequence could set the clipboard (OSC 52), clear the screen, retitle the
//! window or fake BioCage's own lines, and a bidi override could reorder what is seen.
//! So whenever the CLI writes such text to a stream that is a terminal, it goes through
//! [`Stream::show`], which makes every such character visible and harmless (see
//! [`escape`] for the exact form). Each stream is judged on its own (stdout may be a
//! pipe while stderr is the terminal). Streams that are not terminals (pipes, files)
//! and `--json` output get the sandbox's text byte for byte, as before.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};

/// One of the CLI's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// True when this stream is a terminal, so sandbox text on it must be shown inertly.
    pub(crate) fn is_terminal(self) -> bool {
        match self {
            Stream::Stdout => std::io::stdout().is_terminal(),
            Stream::Stderr => std::io::stderr().is_terminal(),
        }
    }

    /// `text` as it may be written to this stream: [`escape`]d on a terminal, unchanged
    /// otherwise.
    pub(crate) fn show(self, text: &str) -> Cow<'_, str> {
        show(text, self.is_terminal())
    }
}

/// `text` [`escape`]d when `terminal`, unchanged otherwise.
pub(crate) fn show(text: &str, terminal: bool) -> Cow<'_, str> {
    if terminal {
        escape(text)
    } else {
        Cow::Borrowed(text)
    }
}

/// True for a character a terminal may act on rather than display: the C0 controls
/// (U+0000-U+001F) except tab and newline, DEL (U+007F), the C1 controls
/// (U+0080-U+009F), and the bidi embeddings, overrides and isolates (U+202A-U+202E,
/// U+2066-U+2069).
pub(crate) fn is_active(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{8}' | '\u{b}'..='\u{1f}' | '\u{7f}'..='\u{9f}'
        | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every [active](is_active) character replaced by a visible escape in the
/// style of Python's `repr`: `\xNN` (two lowercase hex digits) for the C0 controls, DEL
/// and the C1 controls, e.g. ESC is `\x1b`, BEL `\x07`, CR `\x0d`, CSI `\x9b`; `\uNNNN`
/// for the bidi controls, e.g. `\u202e`. Tab, newline and all other text, backslashes
/// included, are kept as they are (so a literal `\x1b` typed by the code looks the same
/// as an escaped ESC: visible either way, never interpreted). Borrows when there is
/// nothing to replace.
pub(crate) fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_active) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if !is_active(c) {
            out.push(c);
        } else if u32::from(c) < 0x100 {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        }
    }
    Cow::Owned(out)
}

/// A writer that [`escape`]s everything written through it. Each write is expected to be
/// whole lines, as the log formatter writes them; bytes that are not UTF-8 are shown as
/// U+FFFD.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Inert<W>(pub W);

impl<W: Write> Write for Inert<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0.write_all(escape(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Standard error, [`Inert`]: the log writer when stderr is a terminal, since log lines
/// can quote sandbox text (file names, agent messages).
pub(crate) fn inert_stderr() -> Inert<std::io::Stderr> {
    Inert(std::io::stderr())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_newlines_and_tabs_pass_unchanged() {
        for text in [
            "",
            "Hello from BioCage!\n",
            "a\tb\nc\n\n",
            "größe: 3 µm, 日本語, emoji 🧬, arabic مرحبا, hebrew שלום\n",
            "backslashes stay: C:\\path \\x1b \\n\n",
            "\u{a0}\u{ff}\u{100}\u{2029}\u{2065}\u{206a}\u{200e}",
        ] {
            assert!(
                matches!(escape(text), Cow::Borrowed(t) if t == text),
                "{text:?}"
            );
        }
    }

    #[test]
    fn every_c0_control_but_tab_and_newline_is_escaped() {
        for b in 0u32..0x20 {
            let c = char::from_u32(b).unwrap();
            let shown = escape(&format!("a{c}b")).into_owned();
            if c == '\t' || c == '\n' {
                assert_eq!(shown, format!("a{c}b"));
            } else {
                assert_eq!(shown, format!("a\\x{b:02x}b"));
            }
        }
        assert_eq!(escape("\x1b[2J"), "\\x1b[2J");
        assert_eq!(escape("\x07"), "\\x07");
        assert_eq!(escape("over\rwrite"), "over\\x0dwrite");
        assert_eq!(escape("\0"), "\\x00");
    }

    #[test]
    fn del_and_c1_controls_are_escaped() {
        assert_eq!(escape("\x7f"), "\\x7f");
        for b in 0x80u32..=0x9f {
            let c = char::from_u32(b).unwrap();
            assert_eq!(escape(&c.to_string()), format!("\\x{b:02x}"));
        }
        assert_eq!(escape("\u{9b}31m"), "\\x9b31m");
        assert_eq!(escape("\u{9d}0;t\u{9c}"), "\\x9d0;t\\x9c");
    }

    #[test]
    fn bidi_overrides_and_isolates_are_escaped() {
        for (c, shown) in [
            ('\u{202a}', "\\u202a"),
            ('\u{202b}', "\\u202b"),
            ('\u{202c}', "\\u202c"),
            ('\u{202d}', "\\u202d"),
            ('\u{202e}', "\\u202e"),
            ('\u{2066}', "\\u2066"),
            ('\u{2067}', "\\u2067"),
            ('\u{2068}', "\\u2068"),
            ('\u{2069}', "\\u2069"),
        ] {
            assert_eq!(escape(&format!("x{c}y")), format!("x{shown}y"));
        }
    }

    #[test]
    fn the_tmux_attack_is_shown_not_run() {
        let attack =
            "\x1b]52;c;Y3VybA==\x07\x1b[2J\x1b[HBioCage 0.1.0 on docker. All checks passed.\n";
        let shown = escape(attack);
        assert_eq!(
            shown,
            "\\x1b]52;c;Y3VybA==\\x07\\x1b[2J\\x1b[HBioCage 0.1.0 on docker. All checks passed.\n"
        );
        assert!(!shown.chars().any(is_active));
    }

    #[test]
    fn escaped_text_has_nothing_active_left() {
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        let shown = escape(&all);
        assert!(!shown.chars().any(is_active));
        assert_eq!(shown.matches('\n').count(), 1);
        assert_eq!(shown.matches('\t').count(), 1);
    }

    #[test]
    fn the_inert_writer_escapes_whole_lines() {
        let mut w = Inert(Vec::new());
        w.write_all("WARN note: \x1b]0;t\x07 \u{202e}x\tz\n".as_bytes())
            .unwrap();
        w.write_all(b"bad \xff\x1b\n").unwrap();
        assert_eq!(
            String::from_utf8(w.0).unwrap(),
            "WARN note: \\x1b]0;t\\x07 \\u202ex\tz\nbad \u{fffd}\\x1b\n"
        );
    }

    #[test]
    fn show_escapes_only_for_a_terminal() {
        let text = "\x1b[31mred\u{202e}\n";
        assert_eq!(show(text, false), text);
        assert_eq!(show(text, true), "\\x1b[31mred\\u202e\n");
    }
}
