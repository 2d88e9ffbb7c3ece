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

fn has_arithmetic(text: &str) -> bool {
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
    text.contains("\\frac")
        || text.contains("\\sqrt")
        || text.contains("x^")
        || text.contains('÷')
        || text.contains('×')
}

fn count_numbers(ws: &[&str]) -> usize {
    ws.iter().filter(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit())).count()
}

/// The domain of a request from its last user message.
pub fn classify(last_user_message: &str) -> &'static str {
    let text = last_user_message.to_lowercase();
    let ws = words(&text);
    let has_word = |list: &[&str]| ws.iter().any(|w| list.contains(w));

    // Phrases match anywhere; single words match whole words or their inflections ("poisoning"),
    // so that "something" does not contain "meth".
    let harmful = SAFETY.iter().any(|k| {
        if k.contains(' ') { text.contains(k) } else { ws.iter().any(|w| w == k || (k.len() >= 5 && w.starts_with(k))) }
    });
    if harmful {
        return "safety";
    }
    if text.contains("```") || text.contains("def ") || text.contains("();") || has_word(CODE_WORDS) {
        return "code";
    }
    let counted_unit =
        ["words", "sentences", "paragraphs", "bullet", "sections", "lines", "letters"].iter().any(|u| text.contains(u));
    if STRONG_CONSTRAINTS.iter().any(|k| text.contains(k))
        || (counted_unit && WEAK_CONSTRAINTS.iter().any(|k| text.contains(k)))
    {
        return "precise_if";
    }
    let numbers = count_numbers(&ws);
    let quantity_question = text.contains("how many") || text.contains("how much") || text.contains("how long will");
    if has_arithmetic(&text)
        || has_word(STRONG_MATH_WORDS)
        || (has_word(MATH_WORDS) && numbers >= 1)
        || (quantity_question && numbers >= 2)
    {
        return "math";
    }
    let first = ws.first().copied().unwrap_or("");
    let question = text.trim_end().ends_with('?');
    let wh_start =
        ["who", "when", "where", "which", "what", "how", "is", "was", "did", "are", "were", "does"].contains(&first);
    if has_word(FOCUS_WORDS) && !["who", "when", "where", "which"].contains(&first) {
        return "focus";
    }
    // A question to the assistant about itself is conversation, not a knowledge question.
    let about_assistant = has_word(&["you", "your", "yours", "yourself"]);
    if (question || wh_start)
        && (has_word(FACT_WORDS) || (wh_start && ws.len() >= 4 && first != "how" && !about_assistant))
    {
        return "factuality";
    }
    "general"
}

#[cfg(test)]
mod tests {
    use super::*;

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
