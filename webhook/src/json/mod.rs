//! A reader of JSON text into the review's borrowed views (`review.rs`, `inject/pod.rs`).
//!
//! Why not serde_json: a review is mostly fields the webhook does not read (the
//! request's kinds and user, every container's env, probes, ports, mounts), and
//! serde_json, through serde's derive, spent about half of all a review's instructions
//! under load skipping them, at some 16 instructions a byte. This reader finds the end
//! of a string eight bytes at a time and skips a value in one loop, with its nesting on
//! a bit stack: no recursion however deep a skipped value is, and no allocation until
//! it is deeper than 64.
//!
//! It accepts exactly the JSON serde_json accepts, and reads exactly what serde's derive
//! on the same views reads: the derive stays on the views as the reference, and the
//! fuzz target and the test command check that both agree on every body they see
//! (`review::read_agrees`). So, as serde_json does: a string that is read is unescaped
//! and a lone surrogate in it is refused, while a skipped one has its escapes checked
//! but not paired; a skipped number is checked against the grammar, not its range; and
//! a field the views read may appear once per object.

use std::borrow::Cow;

mod string;

pub type Result<T> = std::result::Result<T, Error>;

/// Why a body is not what the views read, and where (as serde_json says it). Boxed, so
/// that every `Result` of the reader fits in registers.
#[derive(Debug, thiserror::Error)]
#[error("{} at line {} column {}", .0.what, .0.line, .0.column)]
pub struct Error(Box<Where>);

#[derive(Debug)]
struct Where {
    what: String,
    line: usize,
    column: usize,
}

pub struct Reader<'a> {
    text: &'a str,
    at: usize,
    /// Whether the text holds a control character anywhere before its trailing
    /// whitespace. The apiserver's compact JSON holds none, and then a string can hold
    /// none, so string scans look for quotes and backslashes only.
    control: bool,
}

impl<'a> Reader<'a> {
    pub fn new(text: &'a str) -> Self {
        // Whitespace after the last other byte lies outside every string: a string
        // that reaches it never ends, and fails as unterminated. So the newline that
        // ends every body the apiserver's encoder writes keeps the fast scan.
        let value = text.trim_end_matches([' ', '\n', '\r', '\t']);
        // A fold, not `any`: without an early exit it is vectorized, 16 bytes at a time.
        let control = value.bytes().fold(false, |found, b| found | (b < 0x20));
        Reader {
            text,
            at: 0,
            control,
        }
    }

    /// After the top-level value: only whitespace may follow.
    pub fn end(mut self) -> Result<()> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.error("trailing characters")),
        }
    }

    /// Reads an object, handing each key to `field`, which reads or skips its value.
    pub fn object(
        &mut self,
        expected: &str,
        mut field: impl FnMut(&mut Self, Cow<'a, str>) -> Result<()>,
    ) -> Result<()> {
        match self.peek() {
            Some(b'{') => self.at += 1,
            other => return Err(self.invalid_type(other, expected)),
        }
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(());
        }
        loop {
            match self.peek() {
                Some(b'"') => self.at += 1,
                Some(_) => return Err(self.error("key must be a string")),
                None => return Err(self.eof()),
            }
            let key = self.string_rest()?;
            self.colon()?;
            field(self, key)?;
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(());
                }
                Some(_) => return Err(self.error("expected `,` or `}`")),
                None => return Err(self.eof()),
            }
        }
    }

    /// Reads an array, `item` reading each element.
    pub fn array(
        &mut self,
        expected: &str,
        mut item: impl FnMut(&mut Self) -> Result<()>,
    ) -> Result<()> {
        match self.peek() {
            Some(b'[') => self.at += 1,
            other => return Err(self.invalid_type(other, expected)),
        }
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(());
        }
        loop {
            item(self)?;
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(());
                }
                Some(_) => return Err(self.error("expected `,` or `]`")),
                None => return Err(self.eof()),
            }
        }
    }

    /// `None` for `null`, else what `read` reads.
    pub fn nullable<T>(&mut self, read: impl FnOnce(&mut Self) -> Result<T>) -> Result<Option<T>> {
        if self.peek() == Some(b'n') {
            self.literal(b"null")?;
            return Ok(None);
        }
        read(self).map(Some)
    }

    pub fn string(&mut self, expected: &str) -> Result<Cow<'a, str>> {
        match self.peek() {
            Some(b'"') => {
                self.at += 1;
                self.string_rest()
            }
            other => Err(self.invalid_type(other, expected)),
        }
    }

    pub fn boolean(&mut self) -> Result<bool> {
        match self.peek() {
            Some(b't') => self.literal(b"true").map(|()| true),
            Some(b'f') => self.literal(b"false").map(|()| false),
            other => Err(self.invalid_type(other, "a boolean")),
        }
    }

    /// An integer that fits an i64, refused as serde_json refuses it for an i64: a
    /// fraction, an exponent or `-0` (which it reads as a float), or out of range.
    pub fn i64(&mut self) -> Result<i64> {
        let start = self.at;
        let text = match self.peek() {
            Some(b'-' | b'0'..=b'9') => self.number()?,
            other => return Err(self.invalid_type(other, "i64")),
        };
        let (negative, digits) = match text.strip_prefix('-') {
            Some(digits) => (true, digits),
            None => (false, text),
        };
        let integer = digits.bytes().all(|b| b.is_ascii_digit());
        let magnitude = digits.parse::<u64>().ok().filter(|_| integer);
        let value = match (negative, magnitude) {
            (false, Some(m)) => i64::try_from(m).ok(),
            (true, Some(m)) if m > 0 => 0i64.checked_sub_unsigned(m),
            _ => None,
        };
        value.ok_or_else(|| {
            self.at = start;
            self.error(&format!("invalid value: number {text}, expected i64"))
        })
    }

    /// The text of a number, checked against JSON's grammar (not its range).
    pub fn number(&mut self) -> Result<&'a str> {
        let start = self.at;
        self.skip_number()?;
        Ok(&self.text[start..self.at])
    }

    /// The next value's first byte, after whitespace.
    #[inline]
    pub fn peek(&mut self) -> Option<u8> {
        let bytes = self.text.as_bytes();
        while let Some(&b) = bytes.get(self.at) {
            if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
                return Some(b);
            }
            self.at += 1;
        }
        None
    }

    /// Passes over one value of any kind, checking it as serde_json does.
    pub fn skip(&mut self) -> Result<()> {
        let mut open = Nesting::default();
        loop {
            // A value.
            match self.peek() {
                Some(b'"') => {
                    self.at += 1;
                    self.skip_string_rest()?;
                }
                Some(b'{') => {
                    self.at += 1;
                    if self.peek() == Some(b'}') {
                        self.at += 1;
                    } else {
                        open.push(true);
                        self.skip_key()?;
                        continue;
                    }
                }
                Some(b'[') => {
                    self.at += 1;
                    if self.peek() == Some(b']') {
                        self.at += 1;
                    } else {
                        open.push(false);
                        continue;
                    }
                }
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                Some(b'-' | b'0'..=b'9') => self.skip_number()?,
                Some(_) => return Err(self.error("expected value")),
                None => return Err(self.eof()),
            }
            // What follows it: the next value, or the ends of what it closes.
            loop {
                let Some(in_object) = open.top() else {
                    return Ok(());
                };
                match self.peek() {
                    Some(b',') => {
                        self.at += 1;
                        if in_object {
                            self.skip_key()?;
                        }
                        break;
                    }
                    Some(b'}') if in_object => {
                        self.at += 1;
                        open.pop();
                    }
                    Some(b']') if !in_object => {
                        self.at += 1;
                        open.pop();
                    }
                    Some(_) if in_object => return Err(self.error("expected `,` or `}`")),
                    Some(_) => return Err(self.error("expected `,` or `]`")),
                    None => return Err(self.eof()),
                }
            }
        }
    }

    #[inline(always)]
    fn skip_key(&mut self) -> Result<()> {
        match self.peek() {
            Some(b'"') => self.at += 1,
            Some(_) => return Err(self.error("key must be a string")),
            None => return Err(self.eof()),
        }
        self.skip_string_rest()?;
        self.colon()
    }

    #[inline]
    fn colon(&mut self) -> Result<()> {
        match self.peek() {
            Some(b':') => {
                self.at += 1;
                Ok(())
            }
            Some(_) => Err(self.error("expected `:`")),
            None => Err(self.eof()),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<()> {
        let bytes = self.text.as_bytes();
        for &expected in word {
            match bytes.get(self.at) {
                Some(&b) if b == expected => self.at += 1,
                Some(_) => return Err(self.error("expected ident")),
                None => return Err(self.eof()),
            }
        }
        Ok(())
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn skip_number(&mut self) -> Result<()> {
        let bytes = self.text.as_bytes();
        let digits = |at: &mut usize| {
            let start = *at;
            while bytes.get(*at).is_some_and(u8::is_ascii_digit) {
                *at += 1;
            }
            *at > start
        };
        let mut at = self.at;
        if bytes.get(at) == Some(&b'-') {
            at += 1;
        }
        let whole = match bytes.get(at) {
            Some(b'0') => {
                at += 1;
                !bytes.get(at).is_some_and(u8::is_ascii_digit)
            }
            Some(b'1'..=b'9') => digits(&mut at),
            _ => false,
        };
        let fraction = bytes.get(at) != Some(&b'.') || {
            at += 1;
            digits(&mut at)
        };
        let exponent = !matches!(bytes.get(at), Some(b'e' | b'E')) || {
            at += 1;
            if matches!(bytes.get(at), Some(b'+' | b'-')) {
                at += 1;
            }
            digits(&mut at)
        };
        self.at = at;
        if whole && fraction && exponent {
            Ok(())
        } else if at >= bytes.len() {
            Err(self.eof())
        } else {
            Err(self.error("invalid number"))
        }
    }

    #[cold]
    fn invalid_type(&mut self, found: Option<u8>, expected: &str) -> Error {
        let found = match found {
            None => return self.eof(),
            Some(b'"') => "string",
            Some(b'{') => "map",
            Some(b'[') => "sequence",
            Some(b't' | b'f') => "boolean",
            Some(b'n') => "null",
            Some(b'-' | b'0'..=b'9') => "number",
            Some(_) => return self.error("expected value"),
        };
        self.error(&format!("invalid type: {found}, expected {expected}"))
    }

    #[cold]
    fn eof(&self) -> Error {
        self.error_at(self.text.len(), "EOF while parsing a value")
    }

    /// An error at the byte before `self.at` (the one that did not fit).
    #[cold]
    pub fn error(&self, what: &str) -> Error {
        self.error_at(self.at, what)
    }

    #[cold]
    fn error_at(&self, at: usize, what: &str) -> Error {
        let before = &self.text.as_bytes()[..at.min(self.text.len())];
        let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        Error(Box::new(Where {
            what: what.to_owned(),
            line,
            column: before.len() - line_start,
        }))
    }
}

/// The objects and arrays a skipped value is inside, one bit each (1: an object).
#[derive(Default)]
struct Nesting {
    bits: u64,
    depth: usize,
    /// Full words of bits below the current one, past a depth of 64.
    below: Vec<u64>,
}

impl Nesting {
    fn push(&mut self, object: bool) {
        if self.depth > 0 && self.depth.is_multiple_of(64) {
            self.below.push(self.bits);
            self.bits = 0;
        }
        self.bits = self.bits << 1 | u64::from(object);
        self.depth += 1;
    }

    /// Whether the innermost is an object; `None` at the top.
    fn top(&self) -> Option<bool> {
        (self.depth > 0).then_some(self.bits & 1 == 1)
    }

    fn pop(&mut self) {
        self.bits >>= 1;
        self.depth -= 1;
        if self.depth > 0 && self.depth.is_multiple_of(64) {
            self.bits = self.below.pop().expect("a full word below");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_apiservers_trailing_newline_keeps_the_fast_scan() {
        assert!(!Reader::new("{\"a\":\"b\"}\n").control);
        assert!(!Reader::new("{\"a\":\"b\"} \r\n\t").control);
        assert!(Reader::new("{\"a\":\"b\n\"}\n").control);
    }

    #[test]
    fn a_string_that_runs_into_the_trailing_whitespace_is_refused() {
        for text in ["\"abc\n", "\"abc \n  ", "{\"a\":\"b\n"] {
            let mut r = Reader::new(text);
            let read = r.string("a string").and_then(|_| r.end());
            assert!(read.is_err(), "{text:?}");
            assert!(serde_json::from_str::<serde_json::Value>(text).is_err());
        }
        let mut r = Reader::new("\"abc\"\n");
        assert_eq!(r.string("a string").unwrap(), "abc");
        r.end().unwrap();
    }
}
