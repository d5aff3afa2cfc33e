//! Text <-> token ids for GuardReasoner guard models.
//!
//! A [`Tokenizer`] is built from GGUF metadata ([`Tokenizer::from_gguf`]: gpt2-style byte-level
//! BPE with the model's merges and pre-tokenizer) or from a Hugging Face `tokenizer.json`
//! ([`Tokenizer::from_file`], [`Tokenizer::from_hf_dir`]). BPE itself runs in the `tokenizers`
//! crate; this crate decides what is text and what is a special token.
//!
//! Special tokens are a security boundary for a guard: text that the program writes (chat
//! templates, the guard instruction) may contain special tokens such as `<|im_end|>`, text that
//! comes from users may not. [`Tokenizer::encode_trusted`] recognises special-token text,
//! [`Tokenizer::encode_untrusted`] encodes it as ordinary characters, and
//! [`Tokenizer::encode_pieces`] / [`Tokenizer::encode_guard_prompt`] mix the two while
//! tokenizing the joined text in one pass, so piece boundaries add no extra token splits.

mod bytelevel;
mod fastpath;
mod gguf;
mod hf;
mod pretokenizer;
mod special;
mod stream;

use std::path::{Path, PathBuf};

use fastpath::FastPath;
use guardreasoner_core::prompt::{build_guard_prompt, Conversation};
use special::SpecialMatcher;

pub use pretokenizer::SUPPORTED_GGUF_PRE_TOKENIZERS;
pub use stream::StreamDecoder;

/// Everything that can go wrong while loading or using a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A tokenizer file could not be read or parsed.
    #[error("{path}: cannot load tokenizer: {message}")]
    Load { path: PathBuf, message: String },
    /// The GGUF file itself could not be read.
    #[error(transparent)]
    Gguf(#[from] guardreasoner_gguf::GgufError),
    /// GGUF tokenizer metadata is present but inconsistent.
    #[error("{path}: bad tokenizer metadata: {message}")]
    BadMetadata { path: PathBuf, message: String },
    /// `tokenizer.ggml.model` names a tokenizer family this crate does not rebuild.
    #[error(
        "{path}: tokenizer model {model:?} is not supported (supported: \"gpt2\", byte-level BPE)"
    )]
    UnsupportedModel { path: PathBuf, model: String },
    /// `tokenizer.ggml.pre` names a pre-tokenizer this crate does not know.
    #[error("{path}: pre-tokenizer {pre:?} is not supported (supported: {supported})", supported = SUPPORTED_GGUF_PRE_TOKENIZERS.join(", "))]
    UnsupportedPreTokenizer { path: PathBuf, pre: String },
    /// The `tokenizers` crate failed while encoding.
    #[error("tokenizer failed to encode text: {0}")]
    Encode(String),
    /// The `tokenizers` crate failed while decoding.
    #[error("tokenizer failed to decode ids: {0}")]
    Decode(String),
    /// A token id that the vocabulary does not have.
    #[error("token id {id} is outside the vocabulary ({vocab_size} tokens)")]
    UnknownId { id: u32, vocab_size: usize },
}

pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;

/// Control tokens whose text marks the end of a turn or document in common chat formats;
/// llama.cpp treats these as end-of-generation too, whatever `eos_token_id` says.
pub(crate) const END_OF_GENERATION_TEXTS: &[&str] = &[
    "<|endoftext|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|end|>",
    "<end_of_turn>",
    "</s>",
];

/// One part of a text to encode, marked by who wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Written by the program: special-token text becomes the special token.
    Trusted(&'a str),
    /// Written by a user: special-token text is ordinary text.
    Untrusted(&'a str),
}

/// The special ids a caller needs to build prompts and stop generation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialIds {
    /// Beginning-of-sequence token, if the model has one.
    pub bos: Option<u32>,
    /// Whether the model expects `bos` in front of every prompt.
    pub add_bos: bool,
    /// Every id that ends generation (EOS, end-of-turn, ...), without duplicates.
    pub eos: Vec<u32>,
}

/// How ids turn back into text.
enum IdDecoder {
    /// Byte-level BPE: every id maps to a fixed byte string, so decoding is concatenation and
    /// streaming only has to hold back incomplete UTF-8.
    Bytes(Vec<Box<[u8]>>),
    /// Any other decoder: delegate to `tokenizers` (streaming compares decoded windows).
    Generic,
}

/// A tokenizer for one model. Cheap to share across threads (`Send + Sync`).
pub struct Tokenizer {
    /// Configured never to match special-token text (`encode_special_tokens = true`): the
    /// special tokens of trusted text are cut out by `specials` before text reaches it.
    inner: tokenizers::Tokenizer,
    /// Faster splitting for the usual byte-level layouts; `None` runs `inner`'s pipeline.
    fast: Option<FastPath>,
    specials: SpecialMatcher,
    /// `is_special[id]`: ids skipped by `decode(.., skip_special = true)`.
    is_special: Vec<bool>,
    decoder: IdDecoder,
    special_ids: SpecialIds,
    /// Where the tokenizer came from, for messages.
    origin: String,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("origin", &self.origin)
            .field("vocab_size", &self.vocab_size())
            .field("special_ids", &self.special_ids)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Rebuild the tokenizer stored in a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(file: &guardreasoner_gguf::GgufFile) -> Result<Self> {
        gguf::from_gguf(file, None)
    }

    /// Like [`Tokenizer::from_gguf`] with another pre-tokenizer than `tokenizer.ggml.pre`
    /// names (one of [`SUPPORTED_GGUF_PRE_TOKENIZERS`]). `gpt-2` reproduces transformers'
    /// GGUF loader, which ignores the field: for SmolLM it then differs from llama.cpp and the
    /// original tokenizer where whitespace precedes a digit.
    pub fn from_gguf_with_pre_tokenizer(
        file: &guardreasoner_gguf::GgufFile,
        pre_tokenizer: &str,
    ) -> Result<Self> {
        gguf::from_gguf(file, Some(pre_tokenizer))
    }

    /// Open a GGUF file and rebuild its tokenizer (reads metadata only; tensors stay mapped).
    pub fn from_gguf_path(path: impl AsRef<Path>) -> Result<Self> {
        let file = guardreasoner_gguf::GgufFile::open(path)?;
        Self::from_gguf(&file)
    }

    /// Load a Hugging Face `tokenizer.json`. Special ids come from its added tokens and
    /// post-processor only; prefer [`Tokenizer::from_hf_dir`] for a model directory, which also
    /// reads `tokenizer_config.json` and `generation_config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        hf::from_file(path.as_ref())
    }

    /// Load the tokenizer of a Hugging Face model directory (`tokenizer.json`, plus BOS/EOS from
    /// `tokenizer_config.json`, `generation_config.json` and `config.json` where present).
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<Self> {
        hf::from_dir(dir.as_ref())
    }

    /// This tokenizer as a Hugging Face `tokenizer.json` text (vocabulary, merges,
    /// pre-tokenizer, decoder and added tokens), e.g. to give a checkpoint converted from GGUF
    /// the tokenizer its GGUF carried. Loading it back with [`Tokenizer::from_file`] encodes
    /// the same ids.
    pub fn to_hf_json(&self) -> Result<String> {
        let mut inner = self.inner.clone();
        // A runtime switch of this crate, not part of the tokenizer's definition.
        inner.set_encode_special_tokens(false);
        inner.to_string(true).map_err(|e| TokenizerError::Load {
            path: PathBuf::from(&self.origin),
            message: format!("cannot serialise the tokenizer: {e}"),
        })
    }

    /// The `tokenizer.ggml.*` GGUF metadata that rebuilds this tokenizer (vocabulary, token
    /// types, merges, pre-tokenizer family, BOS/EOS), for writing a GGUF model file.
    pub fn to_gguf_metadata(&self) -> Result<Vec<(String, guardreasoner_gguf::Value)>> {
        gguf::to_metadata(self)
    }

    /// Wrap a configured `tokenizers` tokenizer; `inner` must already have its special tokens
    /// registered. Used by both loaders.
    fn assemble(
        mut inner: tokenizers::Tokenizer,
        special_ids: SpecialIds,
        origin: String,
    ) -> Result<Self> {
        inner.set_encode_special_tokens(true);
        let vocab_size = inner.get_vocab_size(true);
        let added = inner.get_added_tokens_decoder();
        let mut is_special = vec![false; vocab_size];
        for (&id, token) in &added {
            if token.special {
                if let Some(slot) = is_special.get_mut(id as usize) {
                    *slot = true;
                }
            }
        }
        let specials =
            SpecialMatcher::new(added.iter().filter(|(_, t)| t.special)).map_err(|message| {
                TokenizerError::Load {
                    path: PathBuf::from(&origin),
                    message,
                }
            })?;
        let decoder = match inner.get_decoder() {
            Some(tokenizers::DecoderWrapper::ByteLevel(_)) => IdDecoder::Bytes(
                bytelevel::token_bytes_table(&inner, |id| added.get(&id), vocab_size),
            ),
            _ => IdDecoder::Generic,
        };
        let fast = FastPath::for_tokenizer(&inner);
        Ok(Self {
            inner,
            fast,
            specials,
            is_special,
            decoder,
            special_ids,
            origin,
        })
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.is_special.len()
    }

    /// Where this tokenizer was loaded from (a path), for messages.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// BOS, EOS and whether prompts start with BOS.
    pub fn special_ids(&self) -> &SpecialIds {
        &self.special_ids
    }

    /// The beginning-of-sequence id, if any.
    pub fn bos_id(&self) -> Option<u32> {
        self.special_ids.bos
    }

    /// Every id that ends generation.
    pub fn eos_ids(&self) -> &[u32] {
        &self.special_ids.eos
    }

    /// Whether `id` ends generation.
    pub fn is_eos(&self, id: u32) -> bool {
        self.special_ids.eos.contains(&id)
    }

    /// Whether `id` is a special (control) token.
    pub fn is_special(&self, id: u32) -> bool {
        self.is_special.get(id as usize).copied().unwrap_or(false)
    }

    /// The id of a token given by its vocabulary string (byte-level form for BPE tokens,
    /// e.g. `"Ġthe"`; literal text for special tokens, e.g. `"<|im_end|>"`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary string of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The special tokens (text and id) that trusted text may contain, sorted by id.
    pub fn special_tokens(&self) -> Vec<(String, u32)> {
        self.specials.tokens()
    }

    /// Encode text the program wrote: special-token text (e.g. `<|im_end|>`) becomes the
    /// special token. Never use this for user-supplied text. No BOS is added.
    pub fn encode_trusted(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_pieces(&[Piece::Trusted(text)])
    }

    /// Encode text a user wrote: special-token text is ordinary characters, so a user who
    /// types `<|im_end|>` cannot end a turn. No BOS is added.
    pub fn encode_untrusted(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        self.encode_plain_into(text, &mut ids)?;
        Ok(ids)
    }

    /// Encode the concatenation of `pieces`, recognising special-token text only inside
    /// trusted pieces. Text between special tokens is tokenized as one run across piece
    /// boundaries, so the ids equal those of encoding the joined text whenever the untrusted
    /// pieces hold no special-token text (no boundary artefacts from encoding piece by piece).
    pub fn encode_pieces(&self, pieces: &[Piece<'_>]) -> Result<Vec<u32>> {
        let total: usize = pieces
            .iter()
            .map(|p| match p {
                Piece::Trusted(s) | Piece::Untrusted(s) => s.len(),
            })
            .sum();
        let mut text = String::with_capacity(total);
        // Special tokens found in trusted pieces: (start, end, id) in `text` byte offsets.
        let mut spans: Vec<(usize, usize, u32)> = Vec::new();
        for piece in pieces {
            match piece {
                Piece::Trusted(s) => {
                    let base = text.len();
                    spans.extend(
                        self.specials
                            .find_all(s)
                            .map(|(start, end, id)| (base + start, base + end, id)),
                    );
                    text.push_str(s);
                }
                Piece::Untrusted(s) => text.push_str(s),
            }
        }
        let mut ids = Vec::with_capacity(total / 3 + 8);
        let mut cursor = 0;
        for (start, end, id) in spans {
            self.encode_plain_into(&text[cursor..start], &mut ids)?;
            ids.push(id);
            cursor = end;
        }
        self.encode_plain_into(&text[cursor..], &mut ids)?;
        Ok(ids)
    }

    /// The guard model's input for one conversation (`INSTRUCTION + "\n" + input`, no BOS),
    /// with the user's prompt and response encoded untrusted and the layout trusted.
    pub fn encode_guard_prompt(&self, conversation: &Conversation) -> Result<Vec<u32>> {
        let layout = guard_layout();
        let response = conversation
            .response
            .as_deref()
            .unwrap_or(guardreasoner_core::prompt::NO_RESPONSE);
        self.encode_pieces(&[
            Piece::Trusted(&layout.head),
            Piece::Untrusted(&conversation.prompt),
            Piece::Trusted(&layout.middle),
            Piece::Untrusted(response),
            Piece::Trusted(&layout.tail),
        ])
    }

    /// BPE over text that holds no special tokens (special-token text stays characters).
    fn encode_plain_into(&self, text: &str, ids: &mut Vec<u32>) -> Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        if let Some(fast) = &self.fast {
            return fast
                .encode_into(self.inner.get_model(), text, ids)
                .map_err(|e| TokenizerError::Encode(e.to_string()));
        }
        self.encode_plain_reference_into(text, ids)
    }

    /// [`Tokenizer::encode_untrusted`] through the `tokenizers` pipeline even where the fast
    /// path applies: the reference the fast path is tested against.
    #[doc(hidden)]
    pub fn encode_untrusted_reference(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if !text.is_empty() {
            self.encode_plain_reference_into(text, &mut ids)?;
        }
        Ok(ids)
    }

    /// Whether encoding takes the fast path (see `fastpath.rs`).
    #[doc(hidden)]
    pub fn uses_fast_path(&self) -> bool {
        self.fast.is_some()
    }

    fn encode_plain_reference_into(&self, text: &str, ids: &mut Vec<u32>) -> Result<()> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        ids.extend_from_slice(encoding.get_ids());
        Ok(())
    }

    /// Decode ids to text. Invalid UTF-8 (a sequence cut mid-character) becomes U+FFFD.
    /// With `skip_special`, special tokens (BOS, EOS, ...) are left out.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.check_ids(ids)?;
        match &self.decoder {
            IdDecoder::Bytes(table) => {
                let mut bytes = Vec::with_capacity(ids.len() * 4);
                for &id in ids {
                    if !(skip_special && self.is_special[id as usize]) {
                        bytes.extend_from_slice(&table[id as usize]);
                    }
                }
                Ok(match String::from_utf8(bytes) {
                    Ok(s) => s,
                    Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
                })
            }
            IdDecoder::Generic => self
                .inner
                .decode(ids, skip_special)
                .map_err(|e| TokenizerError::Decode(e.to_string())),
        }
    }

    /// The raw bytes of one token under a byte-level decoder (`None` for other decoders).
    /// A token may hold part of a UTF-8 character.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        match &self.decoder {
            IdDecoder::Bytes(table) => table.get(id as usize).map(|b| &b[..]),
            IdDecoder::Generic => None,
        }
    }

    /// A decoder for ids that arrive one at a time (generation), which emits text only once
    /// it is complete UTF-8.
    pub fn stream_decoder(&self, skip_special: bool) -> StreamDecoder<'_> {
        StreamDecoder::new(self, skip_special)
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        match ids.iter().find(|&&id| id as usize >= self.vocab_size()) {
            Some(&id) => Err(TokenizerError::UnknownId {
                id,
                vocab_size: self.vocab_size(),
            }),
            None => Ok(()),
        }
    }
}

/// The trusted text around the two user-supplied fields of the guard prompt, taken from
/// `guardreasoner_core::prompt` so the layout has one definition.
struct GuardLayout {
    head: String,
    middle: String,
    tail: String,
}

fn guard_layout() -> &'static GuardLayout {
    static LAYOUT: std::sync::OnceLock<GuardLayout> = std::sync::OnceLock::new();
    LAYOUT.get_or_init(|| {
        // Sentinels that the fixed layout text never contains mark where user text goes.
        const PROMPT_MARK: &str = "\u{0}\u{1}prompt\u{1}\u{0}";
        const RESPONSE_MARK: &str = "\u{0}\u{1}response\u{1}\u{0}";
        let full = build_guard_prompt(PROMPT_MARK, Some(RESPONSE_MARK));
        let (head, rest) = full
            .split_once(PROMPT_MARK)
            .expect("build_guard_prompt places the prompt verbatim");
        let (middle, tail) = rest
            .split_once(RESPONSE_MARK)
            .expect("build_guard_prompt places the response verbatim");
        GuardLayout {
            head: head.to_string(),
            middle: middle.to_string(),
            tail: tail.to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_and_errors_cross_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Tokenizer>();
        assert_send_sync::<TokenizerError>();
    }

    #[test]
    fn guard_layout_reassembles_the_core_prompt() {
        let layout = guard_layout();
        let joined = format!(
            "{}user says{}ai says{}",
            layout.head, layout.middle, layout.tail
        );
        assert_eq!(joined, build_guard_prompt("user says", Some("ai says")));
        assert!(layout
            .head
            .starts_with(guardreasoner_core::prompt::INSTRUCTION));
    }
}
