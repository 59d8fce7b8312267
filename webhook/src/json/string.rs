//! Strings: finding a string's end eight bytes at a time, unescaping a string that is
//! read, and checking the escapes of one that is skipped.

use std::borrow::Cow;

use super::{Error, Reader, Result};

impl<'a> Reader<'a> {
    /// The rest of a string after its opening quote, unescaped.
    #[inline(always)]
    pub(super) fn string_rest(&mut self) -> Result<Cow<'a, str>> {
        let start = self.at;
        let end = self.string_end(start);
        match self.text.as_bytes().get(end) {
            Some(b'"') => {
                self.at = end + 1;
                Ok(Cow::Borrowed(&self.text[start..end]))
            }
            _ => {
                self.at = end;
                self.unescape(start).map(Cow::Owned)
            }
        }
    }

    /// From `self.at`, at a backslash or a byte a string may not hold.
    #[cold]
    fn unescape(&mut self, start: usize) -> Result<String> {
        let bytes = self.text.as_bytes();
        let mut out = String::with_capacity(self.at - start + 16);
        let mut from = start;
        loop {
            out.push_str(&self.text[from..self.at]);
            match bytes.get(self.at) {
                Some(b'"') => {
                    self.at += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.at += 1;
                    out.push(self.escape()?);
                }
                Some(_) => return Err(self.control_character()),
                None => return Err(self.eof()),
            }
            from = self.at;
            self.at = special::<true>(bytes, from);
        }
    }

    /// One escape after its backslash, as a char; `\u` pairs must be whole.
    fn escape(&mut self) -> Result<char> {
        let bytes = self.text.as_bytes();
        let Some(&b) = bytes.get(self.at) else {
            return Err(self.eof());
        };
        self.at += 1;
        Ok(match b {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let high = self.hex4()?;
                let low = match high {
                    0xDC00..=0xDFFF => {
                        return Err(self.error("lone leading surrogate in hex escape"));
                    }
                    0xD800..=0xDBFF => {
                        if bytes.get(self.at..self.at + 2) != Some(b"\\u") {
                            self.at = (self.at + 1).min(bytes.len());
                            return Err(self.error("unexpected end of hex escape"));
                        }
                        self.at += 2;
                        match self.hex4()? {
                            low @ 0xDC00..=0xDFFF => Some(low),
                            _ => return Err(self.error("lone leading surrogate in hex escape")),
                        }
                    }
                    _ => None,
                };
                let code = match low {
                    Some(low) => {
                        0x1_0000 + ((u32::from(high) - 0xD800) << 10 | (u32::from(low) - 0xDC00))
                    }
                    None => u32::from(high),
                };
                char::from_u32(code).expect("surrogates are paired above")
            }
            _ => return Err(self.error("invalid escape")),
        })
    }

    fn hex4(&mut self) -> Result<u16> {
        let mut n = 0u16;
        for _ in 0..4 {
            let Some(&b) = self.text.as_bytes().get(self.at) else {
                return Err(self.eof());
            };
            let digit = (b as char)
                .to_digit(16)
                .ok_or_else(|| self.error("invalid escape"))?;
            self.at += 1;
            n = n << 4 | digit as u16;
        }
        Ok(n)
    }

    /// Passes the rest of a string, checking its escapes but not pairing surrogates.
    #[inline(always)]
    pub(super) fn skip_string_rest(&mut self) -> Result<()> {
        let bytes = self.text.as_bytes();
        let end = self.string_end(self.at);
        if bytes.get(end) == Some(&b'"') {
            self.at = end + 1;
            return Ok(());
        }
        self.at = end;
        self.skip_escaped_string_rest()
    }

    /// `skip_string_rest` from an escape or a byte a string may not hold.
    #[cold]
    fn skip_escaped_string_rest(&mut self) -> Result<()> {
        let bytes = self.text.as_bytes();
        loop {
            match bytes.get(self.at) {
                Some(b'"') => {
                    self.at += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    self.at += 1;
                    match bytes.get(self.at) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                            self.at += 1
                        }
                        Some(b'u') => {
                            self.at += 1;
                            self.hex4()?;
                        }
                        Some(_) => {
                            self.at += 1;
                            return Err(self.error("invalid escape"));
                        }
                        None => return Err(self.eof()),
                    }
                    self.at = special::<true>(bytes, self.at);
                }
                Some(_) => return Err(self.control_character()),
                None => return Err(self.eof()),
            }
        }
    }

    /// `special` from `at`, looking for control characters only if the text has any.
    #[inline(always)]
    fn string_end(&self, at: usize) -> usize {
        if self.control {
            special::<true>(self.text.as_bytes(), at)
        } else {
            special::<false>(self.text.as_bytes(), at)
        }
    }

    #[cold]
    pub(super) fn control_character(&mut self) -> Error {
        self.at += 1;
        self.error("control character (\\u0000-\\u001F) found while parsing a string")
    }
}

/// The first byte at or after `at` that ends a run of plain string bytes: a quote, a
/// backslash or, if `CONTROL`, a control character (or `bytes.len()`), eight bytes at
/// a time.
#[inline(always)]
fn special<const CONTROL: bool>(bytes: &[u8], mut at: usize) -> usize {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    // The classic test for a zero byte, `(x - ONES) & !x & HIGH`, is exact in its lowest
    // set bit, and only that bit is used.
    while let Some(chunk) = bytes.get(at..at + 8) {
        let v = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let quote = v ^ (ONES * u64::from(b'"'));
        let backslash = v ^ (ONES * u64::from(b'\\'));
        let mut found =
            quote.wrapping_sub(ONES) & !quote | backslash.wrapping_sub(ONES) & !backslash;
        if CONTROL {
            found |= v.wrapping_sub(ONES * 0x20) & !v;
        }
        found &= HIGH;
        if found != 0 {
            return at + (found.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    while let Some(&b) = bytes.get(at) {
        if b == b'"' || b == b'\\' || (CONTROL && b < 0x20) {
            break;
        }
        at += 1;
    }
    at
}
