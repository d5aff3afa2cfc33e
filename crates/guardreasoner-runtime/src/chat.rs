//! Chat prompts for the local engine. Templates are written by us (trusted, so their special
//! tokens are real) and message contents by users (untrusted, so `<|im_end|>` typed by a user
//! stays text): both are encoded together with [`Piece`]s.

use guardreasoner_backend::{ChatMessage, Role};
use guardreasoner_tokenizer::{Piece, Tokenizer};

/// The chat formats the local engine renders, chosen by the special tokens the model has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatFormat {
    /// `<|im_start|>role\ncontent<|im_end|>\n` (SmolLM2, Qwen, ...).
    ChatMl,
    /// `<|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>` (Llama 3).
    Llama3,
}

impl ChatFormat {
    pub fn detect(tokenizer: &Tokenizer) -> Option<ChatFormat> {
        if tokenizer.token_to_id("<|im_start|>").is_some()
            && tokenizer.token_to_id("<|im_end|>").is_some()
        {
            Some(ChatFormat::ChatMl)
        } else if tokenizer.token_to_id("<|start_header_id|>").is_some()
            && tokenizer.token_to_id("<|eot_id|>").is_some()
        {
            Some(ChatFormat::Llama3)
        } else {
            None
        }
    }
}

fn role(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

/// Token ids of a chat, ending with the opening of the assistant's turn.
pub fn encode_chat(tokenizer: &Tokenizer, messages: &[ChatMessage]) -> Result<Vec<u32>, String> {
    let format = ChatFormat::detect(tokenizer).ok_or_else(|| {
        "this model has no known chat format (ChatML or Llama 3); use /v1/completions".to_string()
    })?;
    let mut owned: Vec<(bool, String)> = Vec::new();
    let mut push = |trusted: bool, s: String| owned.push((trusted, s));
    match format {
        ChatFormat::ChatMl => {
            for m in messages {
                push(true, format!("<|im_start|>{}\n", role(m.role)));
                push(false, m.content.clone());
                push(true, "<|im_end|>\n".into());
            }
            push(true, "<|im_start|>assistant\n".into());
        }
        ChatFormat::Llama3 => {
            push(true, "<|begin_of_text|>".into());
            for m in messages {
                push(
                    true,
                    format!("<|start_header_id|>{}<|end_header_id|>\n\n", role(m.role)),
                );
                push(false, m.content.clone());
                push(true, "<|eot_id|>".into());
            }
            push(
                true,
                "<|start_header_id|>assistant<|end_header_id|>\n\n".into(),
            );
        }
    }
    let pieces: Vec<Piece<'_>> = owned
        .iter()
        .map(|(t, s)| {
            if *t {
                Piece::Trusted(s)
            } else {
                Piece::Untrusted(s)
            }
        })
        .collect();
    tokenizer.encode_pieces(&pieces).map_err(|e| e.to_string())
}
