//! Constrained endings: once a sequence has generated a trigger (the guard's `Answers:`
//! header), the rest of it must be one of a fixed set of token sequences (the answer lines),
//! chosen token by token among the allowed continuations, and then it stops. A sequence that
//! would end, or reach its reasoning budget, before the trigger has the trigger forced, so every
//! sequence ends in one of the endings. The engine knows only tokens; what the endings say is
//! the caller's (the guard's answer grammar lives with the parser, in `guardreasoner-core`).

/// How a sequence must end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnswerConstraint {
    /// Generated tokens after which only `endings` may follow.
    pub trigger: Vec<u32>,
    /// Tokens forced when the sequence must answer without having started to (e.g. a
    /// separator and the header); the endings follow them.
    pub forced: Vec<u32>,
    /// The allowed continuations after the trigger; the sequence stops when one is complete.
    pub endings: Vec<Vec<u32>>,
    /// Most tokens generated freely before the answer is forced (`None`: as many as
    /// `max_new_tokens` leaves room for, after `forced` and the longest ending).
    pub budget: Option<usize>,
}

impl AnswerConstraint {
    /// Tokens the forced answer needs at most: `forced` plus the longest ending.
    pub fn reserve(&self) -> usize {
        self.forced.len() + self.endings.iter().map(Vec::len).max().unwrap_or(0)
    }
}

/// Where a constrained sequence is.
#[derive(Clone, Debug)]
pub(crate) enum AnswerState {
    /// Generating freely; the trigger has not appeared.
    Free,
    /// Emitting these forced tokens (then `Ending`).
    Forcing(std::collections::VecDeque<u32>),
    /// After the trigger: `0..n` tokens of an ending emitted.
    Ending(usize),
}

/// A sequence's constraint and its progress.
#[derive(Clone, Debug)]
pub(crate) struct Answering {
    pub constraint: AnswerConstraint,
    pub state: AnswerState,
    /// Free-generation budget in tokens.
    pub budget: usize,
    /// Whether the answer was forced (budget reached or an early end of sequence).
    pub forced: bool,
    /// Tokens emitted since the trigger (the ending so far).
    pub ending: Vec<u32>,
}

/// What to do at one step of a constrained sequence.
pub(crate) enum Choice {
    /// Sample freely.
    Free,
    /// Emit this token (forced).
    Force(u32),
    /// Sample among these tokens only.
    Among(Vec<u32>),
}

impl Answering {
    pub fn new(constraint: AnswerConstraint, max_new_tokens: usize) -> Answering {
        let room = max_new_tokens.saturating_sub(constraint.reserve());
        let budget = constraint.budget.map_or(room, |b| b.min(room));
        Answering {
            constraint,
            state: AnswerState::Free,
            budget,
            forced: false,
            ending: Vec::new(),
        }
    }

    /// Start forcing the answer (an early end, or the budget).
    fn force(&mut self) {
        self.forced = true;
        self.state = AnswerState::Forcing(self.constraint.forced.iter().copied().collect());
    }

    /// The choice for the next token, given the `generated` tokens so far.
    pub fn next(&mut self, generated: usize) -> Choice {
        if matches!(self.state, AnswerState::Free) && generated >= self.budget {
            self.force();
        }
        match &mut self.state {
            AnswerState::Free => Choice::Free,
            AnswerState::Forcing(queue) => match queue.front() {
                Some(&t) => Choice::Force(t),
                None => {
                    self.state = AnswerState::Ending(0);
                    self.next(generated)
                }
            },
            AnswerState::Ending(n) => {
                let n = *n;
                let mut allowed: Vec<u32> = self
                    .constraint
                    .endings
                    .iter()
                    .filter(|e| e.len() > n && e[..n] == self.ending[..])
                    .map(|e| e[n])
                    .collect();
                allowed.sort_unstable();
                allowed.dedup();
                match allowed.as_slice() {
                    [only] => Choice::Force(*only),
                    _ => Choice::Among(allowed),
                }
            }
        }
    }

    /// The tokens certain to follow `generated` (forced ones: the rest of a forced header, an
    /// ending's only continuation), at most `limit`, without changing this state: the decode
    /// step feeds them with the next token in one pass instead of one pass each.
    pub fn forced_run(&self, generated: &[u32], limit: usize) -> Vec<u32> {
        if limit == 0 || (matches!(self.state, AnswerState::Free) && generated.len() < self.budget)
        {
            return Vec::new();
        }
        let mut ahead = self.clone();
        let mut tokens = generated.to_vec();
        let mut run = Vec::new();
        while run.len() < limit {
            let Choice::Force(token) = ahead.next(tokens.len()) else {
                break;
            };
            tokens.push(token);
            run.push(token);
            if ahead.emitted(token, &tokens) {
                break;
            }
        }
        run
    }

    /// Whether `token`, about to be emitted freely, ends the sequence early (an end of
    /// sequence before any answer): then the answer is forced instead and the token dropped.
    pub fn intercept_end(&mut self) -> bool {
        if matches!(self.state, AnswerState::Free) {
            self.force();
            return true;
        }
        false
    }

    /// Record an emitted token; returns whether the sequence is complete (an ending finished).
    pub fn emitted(&mut self, token: u32, generated: &[u32]) -> bool {
        match &mut self.state {
            AnswerState::Free => {
                if generated.ends_with(&self.constraint.trigger) {
                    self.state = AnswerState::Ending(0);
                }
                false
            }
            AnswerState::Forcing(queue) => {
                queue.pop_front();
                if queue.is_empty() {
                    self.state = AnswerState::Ending(0);
                }
                false
            }
            AnswerState::Ending(n) => {
                *n += 1;
                self.ending.push(token);
                let n = *n;
                let ending = &self.ending;
                let endings = &self.constraint.endings;
                let complete = endings.iter().any(|e| e == ending);
                let longer = endings.iter().any(|e| e.len() > n && e[..n] == ending[..]);
                complete && !longer
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn constraint(budget: Option<usize>) -> AnswerConstraint {
        AnswerConstraint {
            trigger: vec![9],
            forced: vec![8, 9],
            endings: vec![vec![1, 2, 3], vec![1, 4], vec![5]],
            budget,
        }
    }

    /// Drive a sequence whose free tokens come from `free`, choosing the smallest allowed
    /// token when constrained; returns the emitted tokens and whether it was forced.
    fn run(c: AnswerConstraint, max_new: usize, free: &[u32]) -> (Vec<u32>, bool) {
        let mut a = Answering::new(c, max_new);
        let mut out = Vec::new();
        let mut free = free.iter().copied();
        loop {
            let token = match a.next(out.len()) {
                Choice::Free => match free.next() {
                    Some(0) | None => {
                        assert!(a.intercept_end());
                        continue;
                    }
                    Some(t) => t,
                },
                Choice::Force(t) => t,
                Choice::Among(allowed) => allowed[0],
            };
            out.push(token);
            if a.emitted(token, &out) {
                return (out, a.forced);
            }
            assert!(out.len() <= max_new, "never runs past max_new_tokens");
        }
    }

    #[test]
    fn a_generated_trigger_constrains_the_rest() {
        // Free 7, 7, then the trigger 9: the ending [1, 2, 3] (smallest first) follows.
        assert_eq!(
            run(constraint(None), 20, &[7, 7, 9]),
            (vec![7, 7, 9, 1, 2, 3], false)
        );
    }

    #[test]
    fn the_budget_and_an_early_end_force_the_answer() {
        // Budget 2: two free tokens, then the forced header and an ending.
        assert_eq!(
            run(constraint(Some(2)), 20, &[7, 7, 7, 7]),
            (vec![7, 7, 8, 9, 1, 2, 3], true)
        );
        // End of sequence (0) before any answer: forced.
        assert_eq!(
            run(constraint(None), 20, &[7, 0]),
            (vec![7, 8, 9, 1, 2, 3], true)
        );
        // No budget: max_new_tokens 8 leaves 8 - (2 + 3) = 3 free tokens.
        assert_eq!(
            run(constraint(None), 8, &[7, 7, 7, 7, 7]),
            (vec![7, 7, 7, 8, 9, 1, 2, 3], true)
        );
    }

    #[test]
    fn the_forced_run_is_what_the_next_choices_would_force() {
        // Free and within budget: nothing is certain.
        let a = Answering::new(constraint(None), 20);
        assert!(a.forced_run(&[7], 8).is_empty());
        // Budget reached: the forced header [8, 9], then the endings diverge ([1..] or [5]).
        let a = Answering::new(constraint(Some(2)), 20);
        assert_eq!(a.forced_run(&[7, 7], 8), [8, 9]);
        assert_eq!(a.forced_run(&[7, 7], 1), [8], "at most `limit`");
        // After ending token 1 the choice is 2 or 4; after [1, 2] only 3 is left, and it ends.
        let mut a = Answering::new(constraint(None), 20);
        a.state = AnswerState::Ending(0);
        assert!(a.forced_run(&[9], 8).is_empty());
        a.emitted(1, &[9, 1]);
        a.emitted(2, &[9, 1, 2]);
        assert_eq!(a.forced_run(&[9, 1, 2], 8), [3]);
        // The state itself did not move.
        assert!(matches!(a.state, AnswerState::Ending(2)));
    }

    #[test]
    fn a_single_allowed_token_is_forced_and_prefix_endings_wait() {
        let mut a = Answering::new(constraint(None), 20);
        a.state = AnswerState::Ending(0);
        assert!(matches!(a.next(0), Choice::Among(ref v) if v == &[1, 5]));
        assert!(!a.emitted(1, &[1]));
        assert!(matches!(a.next(1), Choice::Among(ref v) if v == &[2, 4]));
        assert!(a.emitted(4, &[1, 4]), "[1, 4] is complete");
    }
}
