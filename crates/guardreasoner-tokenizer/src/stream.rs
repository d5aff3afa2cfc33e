//! Incremental decoding: ids arrive one at a time during generation, and a character may be
//! split across tokens (byte-level BPE stores multi-byte UTF-8 characters, emoji especially, as
//! several tokens). Text is emitted only once it is complete, and the concatenation of all
//! emitted text equals [`Tokenizer::decode`] of all ids.

use crate::{IdDecoder, Result, Tokenizer};

/// Decodes a stream of ids; see [`Tokenizer::stream_decoder`].
pub struct StreamDecoder<'t> {
    tokenizer: &'t Tokenizer,
    skip_special: bool,
    /// Byte-level: bytes of an incomplete UTF-8 character waiting for the next token.
    pending: Vec<u8>,
    /// Generic decoders: the ids seen so far, and how many of them are already emitted
    /// (`read`) and where the context window for the next emission starts (`prefix`).
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl<'t> StreamDecoder<'t> {
    pub(crate) fn new(tokenizer: &'t Tokenizer, skip_special: bool) -> Self {
        Self {
            tokenizer,
            skip_special,
            pending: Vec::new(),
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }

    /// Add one id; returns the text that became complete (often empty mid-character).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.tokenizer.check_ids(&[id])?;
        match &self.tokenizer.decoder {
            IdDecoder::Bytes(table) => {
                if !(self.skip_special && self.tokenizer.is_special(id)) {
                    self.pending.extend_from_slice(&table[id as usize]);
                }
                Ok(take_complete_utf8(&mut self.pending))
            }
            IdDecoder::Generic => self.push_generic(id),
        }
    }

    /// End of stream: whatever is still held back (an incomplete character) as U+FFFD.
    pub fn finish(mut self) -> Result<String> {
        match &self.tokenizer.decoder {
            IdDecoder::Bytes(_) => Ok(String::from_utf8_lossy(&self.pending).into_owned()),
            IdDecoder::Generic => {
                let window = &self.ids[self.prefix..];
                let before = self
                    .tokenizer
                    .decode(&window[..self.read - self.prefix], self.skip_special)?;
                let all = self.tokenizer.decode(window, self.skip_special)?;
                self.ids.clear();
                Ok(all.get(before.len()..).unwrap_or_default().to_string())
            }
        }
    }

    /// Decoders such as SentencePiece's strip or add characters depending on neighbours, so
    /// the new text is the difference between decoding a small window with and without the
    /// new ids; it is held back while it ends in a replacement character.
    fn push_generic(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let window = &self.ids[self.prefix..];
        let before = self
            .tokenizer
            .decode(&window[..self.read - self.prefix], self.skip_special)?;
        let all = self.tokenizer.decode(window, self.skip_special)?;
        if all.len() > before.len() && !all.ends_with('\u{FFFD}') && all.starts_with(&before) {
            let new_text = all[before.len()..].to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(new_text)
        } else {
            Ok(String::new())
        }
    }
}

/// Remove and return the longest prefix of `pending` that is settled: valid UTF-8, with
/// invalid sequences replaced by U+FFFD. An incomplete character at the end stays pending.
fn take_complete_utf8(pending: &mut Vec<u8>) -> String {
    let mut out = String::new();
    let mut rest: &[u8] = &pending[..];
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                rest = &[];
                break;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                // `valid` is valid UTF-8 by construction of `valid_up_to`.
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                match e.error_len() {
                    Some(bad) => {
                        out.push('\u{FFFD}');
                        rest = &after[bad..];
                    }
                    None => {
                        rest = after;
                        break;
                    }
                }
            }
        }
    }
    let kept = rest.len();
    let drop = pending.len() - kept;
    pending.drain(..drop);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_incomplete_characters() {
        let mut pending = Vec::new();
        let crab = "🦀".as_bytes();
        pending.extend_from_slice(b"a");
        pending.extend_from_slice(&crab[..2]);
        assert_eq!(take_complete_utf8(&mut pending), "a");
        assert_eq!(pending, &crab[..2]);
        pending.extend_from_slice(&crab[2..]);
        assert_eq!(take_complete_utf8(&mut pending), "🦀");
        assert!(pending.is_empty());
    }

    #[test]
    fn replaces_invalid_bytes_like_lossy_decoding() {
        let bytes = b"x\xffy\xe2\x82z";
        let mut pending = bytes.to_vec();
        assert_eq!(
            take_complete_utf8(&mut pending),
            String::from_utf8_lossy(bytes)
        );
        assert!(pending.is_empty());
    }
}
