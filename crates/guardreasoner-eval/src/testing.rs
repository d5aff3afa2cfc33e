//! A canned GuardReasoner for tests (feature `test-support`): a real loopback HTTP server that
//! answers every guard prompt with a fixed, well-formed (or, for some prompts, deliberately
//! broken) GuardReasoner output that depends only on the prompt.

use guardreasoner_backend::testing::{FaultServer, RecordedRequest, Reply};
use guardreasoner_core::prompt::split_input;
use guardreasoner_core::INSTRUCTION;
use std::time::Duration;

/// A marker a test puts into a user prompt to make the canned guard answer exactly these
/// labels: `[[gold request=harmful completion=refusal response=unharmful]]`.
pub const GOLD_MARKER: &str = "[[gold ";

fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The canned output for a guard prompt. Deterministic in the prompt. Where the user prompt
/// carries a [`GOLD_MARKER`], the answers are the marker's; otherwise they follow a hash of the
/// prompt, and one prompt in 7 gets an output without an answer block (a parse failure).
pub fn canned_guard_output(guard_prompt: &str) -> String {
    let conversation = guard_prompt
        .strip_prefix(INSTRUCTION)
        .and_then(|rest| rest.strip_prefix('\n'))
        .and_then(split_input);
    let Some(conversation) = conversation else {
        return "I cannot read this prompt.".into();
    };
    let user = &conversation.prompt;
    let (request, completion, response) = match user.find(GOLD_MARKER) {
        Some(at) => {
            let spec = &user[at + GOLD_MARKER.len()..];
            let spec = spec.split("]]").next().unwrap_or_default();
            let field = |key: &str| {
                spec.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                    .unwrap_or("None")
                    .to_string()
            };
            (field("request"), field("completion"), field("response"))
        }
        None => {
            let h = fnv1a(user);
            if h % 7 == 0 {
                return "# Task 1\n\n## Reasoning Step 1\nThe request is long and I ran out of"
                    .into();
            }
            let pick = |bit: u64, yes: &str, no: &str| {
                if h >> bit & 1 == 1 { yes } else { no }.to_string()
            };
            let response_present = conversation.response.is_some();
            (
                pick(3, "harmful", "unharmful"),
                if response_present {
                    pick(4, "refusal", "compliance")
                } else {
                    "None".into()
                },
                if response_present {
                    pick(5, "harmful", "unharmful")
                } else {
                    "None".into()
                },
            )
        }
    };
    format!(
        "# Task 1\n\n## Reasoning Step 1\nThe user asks something.\n\n## Conclusion\nThe request is {request}.\n\n\
         # Task 2\n\n## Reasoning Step 1\nThe assistant answers.\n\n## Conclusion\nThe response is {completion}.\n\n\
         # Task 3\n\n## Reasoning Step 1\nThe answer is checked.\n\n## Conclusion\nThe response is {response}.\n\n\
         ---\n\nAnswers: \nRequest: {request}\nCompletion: {completion}\nResponse: {response}\n"
    )
}

/// The reply the canned server gives to one request: the canned output for its `prompt`
/// (completions) or its last message (chat), with token counts, after `delay`.
pub fn canned_reply(request: &RecordedRequest, delay: Duration) -> Reply {
    let body = request.json();
    let prompt = if request.is_chat() {
        body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_string()
    } else {
        body["prompt"].as_str().unwrap_or_default().to_string()
    };
    let text = canned_guard_output(&prompt);
    let tokens = text.split_whitespace().count();
    let reply = serde_json::json!({
        "id": format!("cmpl-{}", request.sequence),
        "object": "text_completion",
        "model": body["model"],
        "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt.len() / 4, "completion_tokens": tokens,
                  "total_tokens": prompt.len() / 4 + tokens}
    });
    if request.is_chat() {
        return Reply::text_for(request, &text).delayed(delay);
    }
    Reply::json(200, &reply).delayed(delay)
}

/// Start the canned guard on 127.0.0.1, answering each request after `delay`.
pub async fn canned_server(delay: Duration) -> std::io::Result<FaultServer> {
    FaultServer::start(move |r| canned_reply(r, delay)).await
}
