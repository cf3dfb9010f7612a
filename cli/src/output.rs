//! What `weft up` prints: each child's log lines behind a `[weft-order]` prefix, and its own
//! messages behind `[weft up]`, in colour on a terminal and plain elsewhere.

use std::io::{IsTerminal, Write};

/// Width of the prefix column: the longest name, `weft-gateway`, in brackets.
const PREFIX_WIDTH: usize = "[weft-gateway]".len();

/// The name `weft up` prints its own messages under.
pub const SELF_NAME: &str = "weft up";

/// ANSI colours of the children, by their index in start order.
const CHILD_COLOURS: [&str; 4] = ["36", "35", "33", "32"];

/// Writes prefixed lines to standard output.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    colour: bool,
}

// === impl Output ===

impl Output {
    /// Colour when standard output is a terminal and neither `NO_COLOR` nor `TERM=dumb` says no.
    pub fn detect() -> Self {
        let no_colour = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
            || std::env::var_os("TERM").is_some_and(|t| t == "dumb");
        Self {
            colour: !no_colour && std::io::stdout().is_terminal(),
        }
    }

    /// An output with colour on or off, whatever the terminal.
    pub fn with_colour(colour: bool) -> Self {
        Self { colour }
    }

    /// Whether lines are coloured.
    pub fn colour(&self) -> bool {
        self.colour
    }

    /// Prepares a child's log line: escape sequences are kept in colour, removed otherwise.
    pub fn clean(&self, line: &str) -> String {
        let line = line.trim_end_matches(['\r', '\n']);
        if self.colour {
            line.to_owned()
        } else {
            strip_ansi(line)
        }
    }

    /// One log line of the child `name`, the `index`-th started.
    pub fn child_line(&self, name: &str, index: usize, line: &str) {
        let colour = CHILD_COLOURS[index % CHILD_COLOURS.len()];
        self.write(&self.prefix(name, colour), line);
    }

    /// A message of `weft up` itself.
    pub fn info(&self, message: &str) {
        for line in message.lines() {
            self.write(&self.prefix(SELF_NAME, "1"), line);
        }
    }

    /// A warning of `weft up` itself (a child exited, a restart).
    pub fn warn(&self, message: &str) {
        for line in message.lines() {
            self.write(&self.prefix(SELF_NAME, "1;31"), line);
        }
    }

    fn prefix(&self, name: &str, colour: &str) -> String {
        let tag = format!("[{name}]");
        if self.colour {
            format!("\x1b[{colour}m{tag:<PREFIX_WIDTH$}\x1b[0m")
        } else {
            format!("{tag:<PREFIX_WIDTH$}")
        }
    }

    fn write(&self, prefix: &str, line: &str) {
        // A closed standard output (`weft up | head`) must not stop the mesh: errors are dropped.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{prefix} {line}");
        let _ = out.flush();
    }
}

/// `line` without ANSI escape sequences (colours, cursor moves).
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        if chars.next_if_eq(&'[').is_some() {
            // CSI: ESC [ parameters and intermediates, then a final byte in '@'..='~'.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else if chars.next_if_eq(&']').is_some() {
            // OSC (titles, links): up to BEL or ESC \.
            while let Some(c) = chars.next() {
                if c == '\x07' || (c == '\x1b' && chars.next_if_eq(&'\\').is_some()) {
                    break;
                }
            }
        } else {
            // Other escapes: intermediates in ' '..='/', then one final character.
            while chars.next_if(|c| (' '..='/').contains(c)).is_some() {}
            chars.next();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_colour_sequences() {
        assert_eq!(
            strip_ansi("\x1b[2m2026-01-01\x1b[0m \x1b[32m INFO\x1b[0m serving"),
            "2026-01-01  INFO serving"
        );
        assert_eq!(strip_ansi("plain"), "plain");
        assert_eq!(strip_ansi("cut \x1b["), "cut ");
        assert_eq!(strip_ansi("é\x1b(Bx\x1b7y"), "éxy");
        assert_eq!(
            strip_ansi("\x1b]8;;http://x\x1b\\link\x1b]8;;\x07!"),
            "link!"
        );
    }

    #[test]
    fn clean_keeps_colour_only_on_a_terminal() {
        let line = "\x1b[1mbold\x1b[0m\r\n";
        assert_eq!(Output::with_colour(false).clean(line), "bold");
        assert_eq!(Output::with_colour(true).clean(line), "\x1b[1mbold\x1b[0m");
    }

    #[test]
    fn prefixes_line_up() {
        let plain = Output::with_colour(false);
        assert_eq!(plain.prefix("weft-auth", "36"), "[weft-auth]   ");
        assert_eq!(plain.prefix("weft-gateway", "32"), "[weft-gateway]");
        assert_eq!(plain.prefix(SELF_NAME, "1"), "[weft up]     ");
    }
}
