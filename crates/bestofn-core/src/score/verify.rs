//! Scorer kind `verify`: rule-based rewards that cannot be fooled by fluent text. A candidate's
//! score is the fraction of recognised checks it passes (0 when nothing is recognised), gated by
//! its validity when the request has `tools` or a `response_format` it checks:
//!
//! - Validity ([`super::validity`]): its tool calls name the request's tools with conforming
//!   arguments and respect `tool_choice`, and a candidate that calls no tool conforms to
//!   `response_format`. It counts as one check, and it is a gate: an invalid candidate scores
//!   the fraction of checks it passes minus 1, in [-1, 0), below every valid candidate (whose
//!   score is in (0, 1]) whatever their other checks.
//!
//! - Constraints stated in the last user message: every instruction of IFEval's registry, read
//!   and checked by `verify/instructions.rs` with IFEval's own rules, one check per
//!   instruction. Recognised phrasings (case-insensitive; N as digits, "300+", "N or more", or
//!   one..twenty, thirty..ninety, once / twice / thrice; a relation is IFEval's "less than" /
//!   "at least", or exactly / at most / no more than / fewer than / under / more than / over /
//!   a minimum of / up to ...). IFEval's own texts are in quotes; the rest are the usual
//!   variants:
//!   - words, sentences: "Answer with {relation} N words", "Your response should contain
//!     {relation} N sentences"; "in under N words", "a 300+ word essay", "N or more words",
//!     "the number of words ... should be N or more" (not "each line ... one sentence")
//!   - paragraphs: "There should be N paragraphs. Paragraphs are separated with the markdown
//!     divider: ***" (IFEval's `***` split), also "N sections separated by the markdown
//!     divider"; "N paragraphs" separated by two new lines / blank lines, or, unsaid, either
//!   - "Paragraph {n} must start with word {word}" ("the second paragraph must start with the
//!     word 'x'"), with IFEval's N paragraphs separated by `\n\n`
//!   - case: "Your entire response should be in English, and in all lowercase letters. No
//!     capital letters are allowed." (one check: lowercase and English), "Your entire response
//!     should be in English, and in all capital letters."; "all lowercase", "in lower case",
//!     "without capital letters", "no capital letters" (lowercase); "all capital letters", "all
//!     caps", "in uppercase", "no lowercase letters allowed" (capitals). "in English" in the
//!     same sentence adds the language
//!   - "In your response, words with all capital letters should appear {relation} N times";
//!     "at least N words in all capital letters", "all-caps words"
//!   - "Your ENTIRE response should be in {language} language, no other language is allowed.";
//!     "respond in French", "using only the Kannada language" (IFEval's 30 languages and a few
//!     more)
//!   - commas: "In your entire response, refrain from the use of any commas."; "no commas",
//!     "without commas", "do not use any commas", "you are not allowed to use any commas"
//!   - "Include keywords ['a', 'b'] in the response."; "include the keywords 'a' and 'b'",
//!     "containing keywords ...", "include the word 'a'", "mention "a""
//!   - "Do not include keywords ['a', 'b'] in the response."; "do not use / without using the
//!     word(s) 'x'", "do not include the following keywords: a, b", "the word 'x' should not
//!     appear", "avoid mentioning "x""
//!   - "In your response, the word {keyword} should appear {relation} N times."; "use the word
//!     x at least twice", "mention the word 'x' for at least N times"
//!   - "In your response, the letter {letter} should appear {relation} N times."; "do not use
//!     the letter e"
//!   - "Entire output should be wrapped in JSON format."; "in JSON format", "valid JSON", "as
//!     JSON" (the reply, markdown fences removed, parses)
//!   - "Your answer must contain exactly N bullet points." (lines starting `*` or `-`)
//!   - "Highlight at least N sections in your answer with markdown, i.e. *highlighted
//!     section*."; "at least N sections should be highlighted"
//!   - "Your response must have N sections. Mark the beginning of each section with
//!     {splitter} X" ("4 sections marked with SECTION X", "label each paragraph with PARAGRAPH
//!     X"); "N sections" alone counts "Section k" in any case
//!   - "The response must contain at least N placeholders represented by square brackets, such
//!     as [address]."
//!   - "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of
//!     joy>>."
//!   - "At the end of your response, please explicitly add a postscript starting with P.S."
//!     (or P.P.S)
//!   - "Answer with one of the following options: ('My answer is yes.', ...)"
//!   - "Give two different responses. Responses and only responses should be separated by 6
//!     asterisk symbols: ******."
//!   - "First repeat the request word for word without change, then give your answer (...)":
//!     the rest of the prompt is the request
//!   - "Finish your response with this exact phrase {ender}. No other words should follow this
//!     phrase."; "end your response / end it with "X"", "the very last sentence of your
//!     response should be "X""
//!   - "Wrap your entire response with double quotation marks."
//!   - not IFEval's: "start / begin your response with 'X'", "when it is your turn, please
//!     always start with X"
//! - The request's `response_format`: `json_object` (the reply is a JSON object) and
//!   `json_schema` (it also conforms to the schema, compiled once per request by the
//!   `jsonschema` crate: see [`super::json_schema`]), as part of validity above.
//! - A configured regex the reply must match.

mod instructions;

pub use self::instructions::Instruction;
#[cfg(test)]
use self::instructions::{Cmp, Divider};

use regex::Regex;

use super::validity::{has_requirements, is_valid};
use super::{BoxFuture, ScoreInput, ScoreOutput, Scorer, ScorerUsage};
use crate::error::Error;

/// The rule-based verifier.
#[derive(Debug, Clone)]
pub struct VerifyScorer {
    /// The scorer's configured name.
    pub name: String,
    /// A pattern every good reply matches, if configured.
    pub pattern: Option<Regex>,
}

/// One recognised check.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// An instruction stated in the prompt (one of IFEval's registry).
    Instruction(Instruction),
    /// Matches the configured regex.
    Pattern,
}

/// The checks a prompt states: the instructions it gives, one check each.
pub fn parse_constraints(prompt: &str) -> Vec<Check> {
    instructions::parse(prompt).into_iter().map(Check::Instruction).collect()
}

/// Whether a reply passes a check.
pub fn passes(check: &Check, reply: &str, pattern: Option<&Regex>) -> bool {
    match check {
        Check::Instruction(instruction) => instruction.holds(reply),
        Check::Pattern => pattern.is_some_and(|r| r.is_match(reply)),
    }
}

/// The checks for a request: stated constraints and the configured pattern (`response_format`
/// is part of validity, the gate).
pub fn checks_for(prompt: &str, has_pattern: bool) -> Vec<Check> {
    let mut checks = parse_constraints(prompt);
    if has_pattern {
        checks.push(Check::Pattern);
    }
    checks
}

impl Scorer for VerifyScorer {
    fn name(&self) -> &str {
        &self.name
    }

    fn pointwise(&self) -> bool {
        true
    }

    fn score<'a>(&'a self, input: ScoreInput<'a>) -> BoxFuture<'a, Result<ScoreOutput, Error>> {
        let prompt = super::last_user_message(input.conversation);
        // The request's own checks (the pattern) here; the prompt's instructions are read with the
        // scoring, off the I/O threads (a long prompt takes milliseconds). `response_format` is
        // part of validity, the gate.
        let mut checks = checks_for("", self.pattern.is_some());
        let prompt = prompt.to_string();
        let (candidates, pattern) = (input.candidates.to_vec(), self.pattern.clone());
        let gate = has_requirements(input.tools, input.response_format)
            .then(|| (input.candidate_messages(), input.tools.cloned(), input.response_format.cloned()));
        let verify = move || -> Vec<f64> {
            checks.extend(parse_constraints(&prompt));
            candidates
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let passed = checks.iter().filter(|k| passes(k, c, pattern.as_ref())).count();
                    match &gate {
                        Some((messages, tools, format)) => {
                            let valid = is_valid(&messages[i], tools.as_ref(), format.as_ref());
                            let fraction = (passed + usize::from(valid)) as f64 / (checks.len() + 1) as f64;
                            if valid { fraction } else { fraction - 1.0 }
                        }
                        None if checks.is_empty() => 0.0,
                        None => passed as f64 / checks.len() as f64,
                    }
                })
                .collect()
        };
        Box::pin(async move {
            // Reading the prompt, patterns, language detection and JSON over long outputs: off the
            // I/O threads.
            let scores = super::off_io_threads(verify).await?;
            Ok(ScoreOutput { scores, usage: ScorerUsage::default() })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::ResponseFormat;

    fn i(instruction: Instruction) -> Check {
        Check::Instruction(instruction)
    }

    #[test]
    fn recognises_ifeval_phrasings() {
        let c = parse_constraints("Answer in all lowercase, in under 50 words.");
        assert_eq!(c, vec![i(Instruction::Lowercase { english: false }), i(Instruction::Words(Cmp::Below, 50))]);
        let c = parse_constraints(
            "Write exactly 3 bullet points. Include the keywords 'tea' and 'milk'. Do not use the word 'coffee'.",
        );
        assert!(c.contains(&i(Instruction::Bullets(3))));
        assert!(c.contains(&i(Instruction::Keywords(vec!["tea".into(), "milk".into()]))));
        assert!(c.contains(&i(Instruction::ForbiddenWords(vec!["coffee".into()]))));
        let c = parse_constraints("End your response with the exact phrase 'Any other questions?'. Use no commas.");
        assert_eq!(c, vec![i(Instruction::EndsWith("Any other questions?".into())), i(Instruction::NoCommas)]);
        let c = parse_constraints(
            "Give a title wrapped in double angular brackets, such as <<poem>>, and use two paragraphs.",
        );
        let two = Instruction::Paragraphs { count: 2, divider: Divider::Either };
        assert_eq!(c, vec![i(Instruction::Title), i(two)]);
        assert!(parse_constraints("Tell me about Paris.").is_empty());
    }

    /// IFEval's `change_case:english_lowercase` text, word for word, once read as a lowercase
    /// and an all-capitals check: a perfect reply scored 0.5 and `accept_score = 1.0` never
    /// fired on it.
    #[tokio::test(flavor = "multi_thread")]
    async fn ifeval_english_lowercase_is_one_check_a_lowercase_reply_passes() {
        let prompt = "Write a short note to a neighbour about a lost cat. Your entire response should be in \
                      English, and in all lowercase letters. No capital letters are allowed.";
        assert_eq!(parse_constraints(prompt), vec![i(Instruction::Lowercase { english: true })]);
        let scorer = VerifyScorer { name: "verify".into(), pattern: None };
        let conversation = [super::super::Message { role: "user".into(), content: prompt.into() }];
        let candidates = [
            "hello neighbour, our grey cat has been missing since tuesday evening. if you see her near your \
             garden, please knock on our door or call us. thank you so much for your help."
                .to_string(),
            "Hello neighbour, our grey cat has been missing since Tuesday evening. If you see her, please call us."
                .to_string(),
        ];
        let input = ScoreInput::of_texts(&conversation, &candidates);
        let out = scorer.score(input).await.unwrap();
        assert_eq!(out.scores, vec![1.0, 0.0]);
    }

    #[test]
    fn the_obedient_candidate_wins() {
        let prompt = "Describe tea. Answer in all lowercase, in under 50 words.";
        let candidates = [
            "Tea is a beverage made from the leaves of Camellia sinensis.".to_string(),
            "tea is a drink brewed from leaves; it comes in green, black and oolong.".to_string(),
            ("tea ".repeat(60)).to_string(),
        ];
        let checks = checks_for(prompt, false);
        let scores: Vec<f64> = candidates
            .iter()
            .map(|c| checks.iter().filter(|k| passes(k, c, None)).count() as f64 / checks.len() as f64)
            .collect();
        assert_eq!(scores, vec![0.5, 1.0, 0.5]);
    }

    #[test]
    fn json_schema_conformance() {
        let schema = serde_json::json!({"type": "object", "required": ["name", "age"], "additionalProperties": false,
            "properties": {"name": {"type": "string", "minLength": 1}, "age": {"type": "integer", "minimum": 0}}});
        let rf = serde_json::json!({"type": "json_schema", "json_schema": {"name": "p", "schema": schema}});
        let rf = ResponseFormat::prepare(&rf).unwrap();
        let ok = |reply: &str| rf.check().passes(reply);
        assert!(ok(r#"{"name": "Ada", "age": 36}"#));
        assert!(ok("```json\n{\"name\": \"Ada\", \"age\": 36}\n```"));
        assert!(!ok(r#"{"name": "Ada"}"#), "missing required");
        assert!(!ok(r#"{"name": "Ada", "age": -1}"#), "below minimum");
        assert!(!ok(r#"{"name": "Ada", "age": 3, "x": 1}"#), "additional property");
        assert!(!ok("Ada, 36"), "not JSON");
    }
}
