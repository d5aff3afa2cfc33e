//! The scheduler's admission on the real base model: the queue limit refuses what is over it
//! while a request runs, and a request's slot is free again by the time its caller hears the
//! result, so a follow-up submitted at once (an `auto` escalation) is admitted. (The scheduler
//! used to release the slot just after sending the result: one `auto` escalation in 16 was
//! refused with a 429 under `loadgen`. That race is too narrow for this test to catch reliably;
//! it states the contract.)

use guardreasoner_backend::{BackendError, GenerationRequest, PromptInput};
use guardreasoner_runtime::{collect, LocalBackend, RuntimeOptions};

fn backend(max_queue: usize) -> Option<LocalBackend> {
    let model = guardreasoner_testing::test_model()?;
    let options = RuntimeOptions {
        threads: Some(2),
        max_queue,
        ..RuntimeOptions::default()
    };
    Some(LocalBackend::load(&model, options).expect("load the base model"))
}

fn request(max_new_tokens: u32) -> GenerationRequest {
    GenerationRequest::new(
        PromptInput::Text("The capital of France is".into()),
        max_new_tokens,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_and_a_finished_request_frees_its_slot_at_once() {
    let Some(backend) = backend(1) else { return };
    // While one request runs, a second is over the limit of one.
    let running = backend.submit(&request(64)).expect("the first is admitted");
    match backend.submit(&request(4)) {
        Err(BackendError::RateLimited { .. }) => {}
        other => panic!(
            "expected a refusal over the queue limit, got {:?}",
            other.map(|_| ())
        ),
    }
    collect(running, "m".into())
        .await
        .expect("the first completes");
    // Each follow-up goes in the moment the previous result arrives: never refused.
    for i in 0..12 {
        let sub = backend
            .submit(&request(2))
            .unwrap_or_else(|e| panic!("follow-up {i} refused: {e}"));
        collect(sub, "m".into()).await.expect("completes");
    }
    assert_eq!(backend.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_choices_of_one_request_read_its_prompt_once() {
    let Some(backend) = backend(4) else { return };
    let mut sampled = request(6);
    sampled.input = PromptInput::Text("Write one sentence about the sea and the sky.".into());
    sampled.temperature = 0.9;
    sampled.seed = Some(5);
    sampled.n = 3;
    let generation = collect(backend.submit(&sampled).unwrap(), "m".into())
        .await
        .expect("three samples");
    assert_eq!(generation.choices.len(), 3);
    assert!(generation
        .choices
        .iter()
        .all(|c| matches!(c.completion_tokens, Some(1..=6))));
    // The first choice computes the prompt; the other two start from its keys/values and
    // run only its last token themselves.
    let prompt = generation.usage.prompt_tokens;
    assert!(prompt > 4);
    assert_eq!(
        generation.timings.unwrap().reused_prompt_tokens,
        2 * (prompt - 1)
    );
    // The same request again draws the same samples.
    let again = collect(backend.submit(&sampled).unwrap(), "m".into())
        .await
        .unwrap();
    let texts = |g: &guardreasoner_backend::Generation| {
        g.choices.iter().map(|c| c.text.clone()).collect::<Vec<_>>()
    };
    assert_eq!(texts(&generation), texts(&again));
    assert_eq!(backend.in_flight(), 0);
}
