//! The GPT-2 byte-level alphabet: BPE vocabularies store every byte as a printable character
//! (bytes that are printable in Latin-1 stand for themselves, the rest are shifted to U+0100 and
//! up, so a space is `Ġ`). Decoding maps each character back to its byte.

use std::collections::HashMap;

use tokenizers::AddedToken;

/// Byte for each character of the byte-level alphabet.
fn char_to_byte() -> HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut map = HashMap::with_capacity(256);
    let mut shifted = 0u32;
    for b in 0..=255u8 {
        let c = if printable(b) {
            char::from(b)
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).expect("U+0100..U+0143 are valid chars")
        };
        map.insert(c, b);
    }
    map
}

/// Decode one byte-level vocabulary entry. Like `tokenizers`' ByteLevel decoder, a token with a
/// character outside the alphabet is taken as literal UTF-8.
fn token_to_bytes(token: &str, alphabet: &HashMap<char, u8>) -> Box<[u8]> {
    let mapped: Option<Vec<u8>> = token.chars().map(|c| alphabet.get(&c).copied()).collect();
    mapped
        .unwrap_or_else(|| token.as_bytes().to_vec())
        .into_boxed_slice()
}

/// The bytes of every id: added tokens are their literal text, model tokens are byte-level
/// decoded. Ids without a token (holes in a vocabulary) decode to nothing.
pub(crate) fn token_bytes_table<'a>(
    tokenizer: &tokenizers::Tokenizer,
    added: impl Fn(u32) -> Option<&'a AddedToken>,
    vocab_size: usize,
) -> Vec<Box<[u8]>> {
    let alphabet = char_to_byte();
    (0..vocab_size as u32)
        .map(|id| match added(id) {
            Some(AddedToken { content, .. }) => content.as_bytes().to_vec().into_boxed_slice(),
            None => tokenizer
                .id_to_token(id)
                .map(|t| token_to_bytes(&t, &alphabet))
                .unwrap_or_default(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphabet_is_a_bijection_with_known_points() {
        let map = char_to_byte();
        assert_eq!(map.len(), 256);
        let mut bytes: Vec<u8> = map.values().copied().collect();
        bytes.sort_unstable();
        bytes.dedup();
        assert_eq!(bytes.len(), 256);
        assert_eq!(map[&'Ġ'], b' ');
        assert_eq!(map[&'Ċ'], b'\n');
        assert_eq!(map[&'ĉ'], b'\t');
        assert_eq!(map[&'A'], b'A');
        assert_eq!(map[&'\u{100}'], 0);
    }

    #[test]
    fn tokens_outside_the_alphabet_stay_literal() {
        let map = char_to_byte();
        assert_eq!(&*token_to_bytes("Ġhi", &map), b" hi");
        assert_eq!(&*token_to_bytes("日本", &map), "日本".as_bytes());
    }
}
