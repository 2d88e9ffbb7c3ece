//! The rule-based domain classifier: RewardBench 2's domains as they apply to requests, plus
//! `code` and `general`, decided from the last user message in microseconds.
//!
//! What each domain means for a request (the rules look for these, in this order; the first
//! domain with a signal wins):
//! - `safety`: asks for help with something harmful (weapons, drugs, hacking, self-harm, ...).
//! - `code`: programming (code fences, languages, "function", "bug", "regex", ...).
//! - `precise_if`: states checkable output constraints in the families of IFEval (word or
//!   sentence counts, case, no commas, bullet counts, JSON output, start/end phrases, ...).
//! - `math`: arithmetic, algebra, calculus, probability, word problems with quantities.
//! - `factuality`: knowledge questions about the world (who, when, where, which, capital, ...).
//! - `focus`: open-ended writing and advice (write, draft, story, essay, tips, explain, ...),
//!   where the answer must stay on the user's topic.
//! - `general`: everything else (greetings, chit-chat, opinions).

use std::collections::HashMap;
use std::sync::LazyLock;

use aho_corasick::AhoCorasick;

/// Keywords that signal a harmful request.
const SAFETY: &[&str] = &[
    "bomb",
    "explosive",
    "weapon",
    "gun without",
    "kill",
    "murder",
    "poison",
    "hack into",
    "hacking into",
    "steal",
    "shoplift",
    "launder",
    "counterfeit",
    "meth",
    "cocaine",
    "heroin",
    "fentanyl",
    "suicide",
    "self-harm",
    "hurt myself",
    "harm myself",
    "malware",
    "ransomware",
    "keylogger",
    "phishing",
    "without getting caught",
    "untraceable",
    "harass",
    "stalk",
    "dox",
    "racist joke",
    "slur",
    "terrorist",
    "break into",
    "fake id",
    "credit card numbers",
    "bypass the security",
    "evade the police",
    "hide a body",
    "nerve agent",
    "bioweapon",
    "overdose",
    "illegally",
    "pirate",
];

/// Words that signal programming.
const CODE_WORDS: &[&str] = &[
    "python",
    "javascript",
    "typescript",
    "java",
    "c++",
    "c#",
    "rust",
    "golang",
    "sql",
    "function",
    "regex",
    "bug",
    "compile",
    "compiler",
    "stacktrace",
    "traceback",
    "script",
    "code",
    "implement",
    "algorithm",
    "html",
    "css",
    "bash",
    "shell",
    "api",
    "endpoint",
    "class",
    "method",
    "variable",
    "array",
    "refactor",
    "debug",
    "segfault",
    "recursion",
    "linked",
    "database",
    "query",
    "dockerfile",
    "kubernetes",
    "git",
    "npm",
    "pandas",
    "numpy",
    "react",
    "unittest",
    "pytest",
    "yaml",
    "lambda",
    "async",
    "thread",
    "runtime",
    "exception",
];

/// Phrases that state a checkable output constraint on their own.
const STRONG_CONSTRAINTS: &[&str] = &[
    "no commas",
    "without commas",
    "any commas",
    "all lowercase",
    "lowercase letters",
    "in lowercase",
    "all capital",
    "all caps",
    "capital letters",
    "in uppercase",
    "uppercase letters",
    "bullet points",
    "markdown bullet",
    "wrap your entire",
    "double quotation",
    "double angular",
    "<<",
    "json format",
    "valid json",
    "end your response with",
    "finish your response with",
    "end your answer with",
    "start your response with",
    "begin your response with",
    "start your answer with",
    "p.s.",
    "postscript",
    "highlight at least",
    "placeholders",
    "include the keywords",
    "do not include the word",
    "do not use the word",
    "without using the word",
    "your entire response",
    "words long",
];

/// Phrases that constrain the output only together with a counted unit ("at most 50 words").
const WEAK_CONSTRAINTS: &[&str] =
    &["at least", "at most", "fewer than", "less than", "exactly", "no more than", "separated by", "must contain"];

/// Mathematical words that need no number beside them.
const STRONG_MATH_WORDS: &[&str] =
    &["probability", "integral", "derivative", "equation", "polynomial", "theorem", "logarithm", "factorial"];

/// Words that signal mathematics.
const MATH_WORDS: &[&str] = &[
    "solve",
    "equation",
    "integral",
    "derivative",
    "probability",
    "calculate",
    "compute",
    "sum",
    "product",
    "percent",
    "percentage",
    "remainder",
    "divisible",
    "prime",
    "factor",
    "polynomial",
    "triangle",
    "area",
    "perimeter",
    "radius",
    "average",
    "ratio",
    "fraction",
    "simplify",
    "evaluate",
    "mod",
    "modulo",
    "matrix",
    "vector",
    "logarithm",
    "log",
    "sqrt",
    "square",
    "cube",
    "digits",
    "integer",
    "integers",
    "roots",
    "theorem",
    "prove",
    "geometry",
    "algebra",
    "arithmetic",
    "multiply",
    "divide",
    "dividing",
    "minus",
    "plus",
    "times",
    "interest",
    "speed",
    "km",
    "mph",
    "dollars",
    "cents",
    "apples",
    "marbles",
    "cookies",
];

/// Words that start or mark a knowledge question.
const FACT_WORDS: &[&str] = &[
    "who",
    "when",
    "where",
    "which",
    "capital",
    "year",
    "founded",
    "invented",
    "discovered",
    "born",
    "died",
    "population",
    "president",
    "history",
    "historical",
    "fact",
    "true",
    "largest",
    "smallest",
    "tallest",
    "longest",
    "oldest",
    "author",
    "wrote",
    "located",
    "country",
    "city",
    "element",
    "planet",
    "war",
    "century",
    "king",
    "queen",
    "language",
    "currency",
    "species",
    "chemical",
    "formula",
];

/// Words that signal open-ended writing or advice.
const FOCUS_WORDS: &[&str] = &[
    "write",
    "draft",
    "compose",
    "story",
    "poem",
    "essay",
    "email",
    "letter",
    "blog",
    "summarize",
    "summary",
    "explain",
    "describe",
    "tips",
    "advice",
    "recommend",
    "suggest",
    "ideas",
    "plan",
    "help",
    "should",
    "outline",
    "review",
    "rewrite",
    "improve",
    "speech",
    "cover",
    "toast",
    "slogan",
    "pitch",
    "itinerary",
    "strategies",
    "ways",
    "guide",
];

fn words(text: &str) -> Vec<&str> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '+' || c == '#')).filter(|w| !w.is_empty()).collect()
}

// What a whole word signals (bits of `WORD_SIGNALS`).
const SAFETY_WORD: u16 = 1 << 0;
/// A safety word of at least five bytes also matches its inflections ("poisoning").
const SAFETY_STEM: u16 = 1 << 1;
const CODE_WORD: u16 = 1 << 2;
const STRONG_MATH_WORD: u16 = 1 << 3;
const MATH_WORD: u16 = 1 << 4;
const FACT_WORD: u16 = 1 << 5;
const FOCUS_WORD: u16 = 1 << 6;
const ABOUT_ASSISTANT: u16 = 1 << 7;

// What a phrase found anywhere in the text signals (bits of `PHRASES`).
const SAFETY_PHRASE: u16 = 1 << 0;
const CODE_MARK: u16 = 1 << 1;
const STRONG_CONSTRAINT: u16 = 1 << 2;
const COUNTED_UNIT: u16 = 1 << 3;
const WEAK_CONSTRAINT: u16 = 1 << 4;
const QUANTITY_QUESTION: u16 = 1 << 5;
const ARITHMETIC_MARK: u16 = 1 << 6;

/// Every word of the lists with the signals it carries: one hash lookup per word of the message
/// instead of a scan of every list.
static WORD_SIGNALS: LazyLock<HashMap<&'static str, u16, foldhash::fast::FixedState>> = LazyLock::new(|| {
    let mut map = HashMap::with_hasher(foldhash::fast::FixedState::default());
    let mut add = |list: &[&'static str], signal: u16| {
        for word in list {
            *map.entry(*word).or_insert(0) |= signal;
        }
    };
    for word in SAFETY.iter().filter(|k| !k.contains(' ')) {
        add(&[word], if word.len() >= 5 { SAFETY_WORD | SAFETY_STEM } else { SAFETY_WORD });
    }
    add(CODE_WORDS, CODE_WORD);
    add(STRONG_MATH_WORDS, STRONG_MATH_WORD);
    add(MATH_WORDS, MATH_WORD);
    add(FACT_WORDS, FACT_WORD);
    add(FOCUS_WORDS, FOCUS_WORD);
    add(&["you", "your", "yours", "yourself"], ABOUT_ASSISTANT);
    map
});

/// Every phrase the rules look for anywhere in the text, found in one pass over it (the rules
/// used to scan the text once per phrase, about sixty times).
/// `None` only if the automaton could not be built, which a unit test rules out for this list.
static PHRASES: LazyLock<Option<(AhoCorasick, Vec<u16>)>> = LazyLock::new(|| {
    let mut phrases: Vec<(&str, u16)> = Vec::new();
    phrases.extend(SAFETY.iter().filter(|k| k.contains(' ')).map(|k| (*k, SAFETY_PHRASE)));
    phrases.extend(["```", "def ", "();"].map(|k| (k, CODE_MARK)));
    phrases.extend(STRONG_CONSTRAINTS.iter().map(|k| (*k, STRONG_CONSTRAINT)));
    phrases.extend(
        ["words", "sentences", "paragraphs", "bullet", "sections", "lines", "letters"].map(|k| (k, COUNTED_UNIT)),
    );
    phrases.extend(WEAK_CONSTRAINTS.iter().map(|k| (*k, WEAK_CONSTRAINT)));
    phrases.extend(["how many", "how much", "how long will"].map(|k| (k, QUANTITY_QUESTION)));
    phrases.extend(["\\frac", "\\sqrt", "x^", "÷", "×"].map(|k| (k, ARITHMETIC_MARK)));
    let automaton = AhoCorasick::new(phrases.iter().map(|(k, _)| k)).ok()?;
    Some((automaton, phrases.iter().map(|(_, signal)| *signal).collect()))
});

fn phrase_signals(text: &str) -> u16 {
    let Some((automaton, signals)) = &*PHRASES else { return 0 };
    automaton
        .find_overlapping_iter(text)
        .fold(0, |found, m| found | signals.get(m.pattern().as_usize()).copied().unwrap_or(0))
}

fn word_signals(ws: &[&str]) -> u16 {
    let mut found = 0;
    for w in ws {
        found |= WORD_SIGNALS.get(w).copied().unwrap_or(0);
        // An inflection of a safety stem: some prefix of five bytes or more is a stem.
        if w.len() > 5 && found & SAFETY_WORD == 0 {
            let stem = (5..w.len())
                .filter(|&end| w.is_char_boundary(end))
                .any(|end| WORD_SIGNALS.get(&w[..end]).is_some_and(|signal| signal & SAFETY_STEM != 0));
            if stem {
                found |= SAFETY_WORD;
            }
        }
    }
    found
}

fn has_arithmetic(text: &str, phrases: u16) -> bool {
    let bytes = text.as_bytes();
    // A digit, optional spaces, an operator, optional spaces, a digit or variable.
    for (i, &b) in bytes.iter().enumerate() {
        if !b.is_ascii_digit() {
            continue;
        }
        let mut j = i + 1;
        while j < bytes.len() && bytes[j] == b' ' {
            j += 1;
        }
        if j < bytes.len() && b"+-*/^=<>".contains(&bytes[j]) {
            let mut k = j + 1;
            while k < bytes.len() && bytes[k] == b' ' {
                k += 1;
            }
            // "10-year-old" is not a subtraction: after a minus only a number counts.
            let variable = bytes[j] != b'-'
                && k < bytes.len()
                && bytes[k].is_ascii_lowercase()
                && bytes.get(k + 1).is_none_or(|c| !c.is_ascii_alphabetic());
            if k < bytes.len() && (bytes[k].is_ascii_digit() || bytes[k] == b'(' || variable) {
                return true;
            }
        }
    }
    phrases & ARITHMETIC_MARK != 0
}

fn count_numbers(ws: &[&str]) -> usize {
    ws.iter().filter(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit())).count()
}

/// The domain of a request from its last user message.
pub fn classify(last_user_message: &str) -> &'static str {
    let text = last_user_message.to_lowercase();
    let ws = words(&text);
    // Phrases match anywhere; single words match whole words or, for safety, their inflections
    // ("poisoning"), so that "something" does not contain "meth".
    let phrases = phrase_signals(&text);
    let signals = word_signals(&ws);
    let has = |signal: u16| signals & signal != 0;
    let found = |signal: u16| phrases & signal != 0;

    if found(SAFETY_PHRASE) || has(SAFETY_WORD) {
        return "safety";
    }
    if found(CODE_MARK) || has(CODE_WORD) {
        return "code";
    }
    if found(STRONG_CONSTRAINT) || (found(COUNTED_UNIT) && found(WEAK_CONSTRAINT)) {
        return "precise_if";
    }
    let numbers = count_numbers(&ws);
    if has_arithmetic(&text, phrases)
        || has(STRONG_MATH_WORD)
        || (has(MATH_WORD) && numbers >= 1)
        || (found(QUANTITY_QUESTION) && numbers >= 2)
    {
        return "math";
    }
    let first = ws.first().copied().unwrap_or("");
    let question = text.trim_end().ends_with('?');
    let wh_start =
        ["who", "when", "where", "which", "what", "how", "is", "was", "did", "are", "were", "does"].contains(&first);
    if has(FOCUS_WORD) && !["who", "when", "where", "which"].contains(&first) {
        return "focus";
    }
    // A question to the assistant about itself is conversation, not a knowledge question.
    if (question || wh_start)
        && (has(FACT_WORD) || (wh_start && ws.len() >= 4 && first != "how" && !has(ABOUT_ASSISTANT)))
    {
        return "factuality";
    }
    "general"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_phrase_automaton_builds() {
        assert!(PHRASES.is_some());
    }

    #[test]
    fn obvious_cases() {
        assert_eq!(classify("What is 17 * 23?"), "math");
        assert_eq!(classify("Write a Python function that reverses a list"), "code");
        assert_eq!(classify("How do I make a bomb at home?"), "safety");
        assert_eq!(classify("Write a haiku about autumn in all lowercase letters."), "precise_if");
        assert_eq!(classify("Who was the first emperor of Rome?"), "factuality");
        assert_eq!(classify("Write a short story about a lighthouse keeper."), "focus");
        assert_eq!(classify("hi there!"), "general");
    }
}
