//! The prose instructions the `verify` scorer reads in a prompt: the instructions of IFEval's
//! registry (google-research `instruction_following_eval/instructions_registry.py`), read from
//! IFEval's own description texts and the usual ways people write them, and checked with IFEval's
//! own rules (its strict mode): its word count (`\w+` tokens), its paragraphs split on `***`, its
//! relations "less than" (<) and "at least" (>=), its substring keyword counts, and so on. Each
//! [`Instruction`] is one instruction of the registry and is one check.
//!
//! Reading consumes the text it reads: each recognised instruction blanks the words it was read
//! from, so a later, more general phrasing never reads them again. IFEval's lowercase instruction
//! ("... in all lowercase letters. No capital letters are allowed.") is one lowercase check, not
//! also a request for capitals; "words with all capital letters should appear at least 5 times"
//! is a count of capitalised words, not a request for an all-capitals reply.
//!
//! Where IFEval leans on a model or a tokenizer, the check is its rule-based equivalent:
//! sentences are counted with IFEval's own rule-based splitter (`split_into_sentences` of its
//! `instructions_util.py`) rather than NLTK's punkt, capitalised words are `\w+` tokens joined by
//! hyphens rather than NLTK's word tokens, and languages are detected by `whatlang` (trigrams)
//! rather than `langdetect` (Swahili, which `whatlang` does not know, by its commonest words).
//! Text in which no language can be detected counts as followed, as in IFEval, and so does text
//! too short for `whatlang` to tell.

use std::ops::Range;
use std::sync::LazyLock;

use regex::Regex;

/// A regex compiled once; `None` only if the pattern (a constant of this file) were invalid,
/// which the tests of every phrasing would show.
macro_rules! regex {
    ($pattern:expr) => {{
        static RE: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(&$pattern).ok());
        RE.as_ref()
    }};
}

/// A comparison of a count with a bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// ==
    Exactly,
    /// >= (IFEval's "at least")
    AtLeast,
    /// <=
    AtMost,
    /// < (IFEval's "less than")
    Below,
    /// >
    Above,
}

impl Cmp {
    /// Whether `count` compares with `bound` this way.
    pub fn holds(self, count: usize, bound: usize) -> bool {
        match self {
            Cmp::Exactly => count == bound,
            Cmp::AtLeast => count >= bound,
            Cmp::AtMost => count <= bound,
            Cmp::Below => count < bound,
            Cmp::Above => count > bound,
        }
    }
}

/// How the paragraphs of a reply are separated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Divider {
    /// The markdown divider `***` (IFEval's `number_paragraphs`); an empty paragraph between two
    /// dividers fails the check.
    Markdown,
    /// A blank line (`\n\n`, IFEval's `nth_paragraph_first_word`).
    BlankLine,
    /// Either, when the prompt does not say.
    Either,
}

/// A language a reply must be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Language {
    /// ISO 639-1 code, as IFEval's `language` argument.
    pub code: &'static str,
    /// English name, as IFEval writes it in the instruction.
    pub name: &'static str,
}

/// One instruction read from a prompt: one instruction of IFEval's registry (its id by
/// [`Instruction::ifeval_id`]), or `StartsWith`, which the registry leaves out.
#[derive(Debug, Clone, PartialEq)]
pub enum Instruction {
    /// `keywords:existence`: every keyword occurs (case-insensitive, anywhere).
    Keywords(Vec<String>),
    /// `keywords:frequency`: the keyword's occurrences (case-insensitive, anywhere) compared
    /// with a count.
    KeywordFrequency {
        /// The keyword, lowercase.
        keyword: String,
        /// The comparison.
        cmp: Cmp,
        /// The count.
        count: usize,
    },
    /// `keywords:forbidden_words`: no word occurs as a whole word (case-insensitive).
    ForbiddenWords(Vec<String>),
    /// `keywords:letter_frequency`: the letter's occurrences (case-insensitive) compared with a
    /// count.
    LetterFrequency {
        /// The letter, lowercase.
        letter: char,
        /// The comparison.
        cmp: Cmp,
        /// The count.
        count: usize,
    },
    /// `language:response_language`: the detected language of the reply.
    Language(Language),
    /// `length_constraints:number_sentences`.
    Sentences(Cmp, usize),
    /// `length_constraints:number_paragraphs`: exactly this many paragraphs.
    Paragraphs {
        /// The number of paragraphs.
        count: usize,
        /// What separates them.
        divider: Divider,
    },
    /// `length_constraints:number_words` (`\w+` tokens).
    Words(Cmp, usize),
    /// `length_constraints:nth_paragraph_first_word`: paragraphs separated by blank lines, and
    /// the nth starts with the word.
    ParagraphFirstWord {
        /// The number of paragraphs, when the prompt states it.
        paragraphs: Option<usize>,
        /// Which paragraph, from 1.
        nth: usize,
        /// Its first word, lowercase.
        word: String,
    },
    /// `detectable_content:number_placeholders`: at least this many `[...]`.
    Placeholders(usize),
    /// `detectable_content:postscript`: a postscript starting with the marker (`P.S.` or
    /// `P.P.S`).
    Postscript(String),
    /// `detectable_format:number_bullet_lists`: exactly this many lines starting `*` or `-`.
    Bullets(usize),
    /// `detectable_format:constrained_response`: the reply contains one of the options.
    OneOf(Vec<String>),
    /// `detectable_format:number_highlighted_sections`: at least this many `*highlighted*`
    /// sections.
    Highlights(usize),
    /// `detectable_format:multiple_sections`: at least this many sections, each starting with
    /// the splitter and a number (`Section 1`).
    Sections {
        /// The word that starts a section.
        splitter: String,
        /// The number of sections.
        count: usize,
        /// Whether the splitter's case must match (it does when the prompt names it).
        exact_case: bool,
    },
    /// `detectable_format:json_format`: the reply, markdown fences removed, is JSON.
    Json,
    /// `detectable_format:title`: a `<<title>>`.
    Title,
    /// `combination:two_responses`: two different responses separated by `******`.
    TwoResponses,
    /// `combination:repeat_prompt`: the reply starts with the request (case-insensitive).
    RepeatPrompt(String),
    /// `startend:end_checker`: the reply ends with the phrase (case-insensitive, closing
    /// quotes ignored).
    EndsWith(String),
    /// Not in IFEval's registry (its `multi-turn:constrained_start` is disabled there): the
    /// reply starts with the phrase (case-insensitive).
    StartsWith(String),
    /// `change_case:capital_word_frequency`: the number of all-capitals words compared with a
    /// count.
    CapitalWords(Cmp, usize),
    /// `change_case:english_capital` (`english`), or all capitals alone: no lowercase letter and
    /// at least one capital.
    Uppercase {
        /// The reply must also be in English.
        english: bool,
    },
    /// `change_case:english_lowercase` (`english`), or all lowercase alone: no capital letter and
    /// at least one lowercase letter.
    Lowercase {
        /// The reply must also be in English.
        english: bool,
    },
    /// `punctuation:no_comma`.
    NoCommas,
    /// `startend:quotation`: the reply is wrapped in double quotation marks.
    Quoted,
}

/// The instruction ids of IFEval's registry (`INSTRUCTION_DICT`), all of which are read and
/// checked here.
#[cfg(test)]
pub const IFEVAL_IDS: [&str; 25] = [
    "keywords:existence",
    "keywords:frequency",
    "keywords:forbidden_words",
    "keywords:letter_frequency",
    "language:response_language",
    "length_constraints:number_sentences",
    "length_constraints:number_paragraphs",
    "length_constraints:number_words",
    "length_constraints:nth_paragraph_first_word",
    "detectable_content:number_placeholders",
    "detectable_content:postscript",
    "detectable_format:number_bullet_lists",
    "detectable_format:constrained_response",
    "detectable_format:number_highlighted_sections",
    "detectable_format:multiple_sections",
    "detectable_format:json_format",
    "detectable_format:title",
    "combination:two_responses",
    "combination:repeat_prompt",
    "startend:end_checker",
    "change_case:capital_word_frequency",
    "change_case:english_capital",
    "change_case:english_lowercase",
    "punctuation:no_comma",
    "startend:quotation",
];

impl Instruction {
    /// The id of this instruction in IFEval's registry; `None` for `StartsWith`.
    pub fn ifeval_id(&self) -> Option<&'static str> {
        Some(match self {
            Instruction::Keywords(_) => "keywords:existence",
            Instruction::KeywordFrequency { .. } => "keywords:frequency",
            Instruction::ForbiddenWords(_) => "keywords:forbidden_words",
            Instruction::LetterFrequency { .. } => "keywords:letter_frequency",
            Instruction::Language(_) => "language:response_language",
            Instruction::Sentences(..) => "length_constraints:number_sentences",
            Instruction::Paragraphs { .. } => "length_constraints:number_paragraphs",
            Instruction::Words(..) => "length_constraints:number_words",
            Instruction::ParagraphFirstWord { .. } => "length_constraints:nth_paragraph_first_word",
            Instruction::Placeholders(_) => "detectable_content:number_placeholders",
            Instruction::Postscript(_) => "detectable_content:postscript",
            Instruction::Bullets(_) => "detectable_format:number_bullet_lists",
            Instruction::OneOf(_) => "detectable_format:constrained_response",
            Instruction::Highlights(_) => "detectable_format:number_highlighted_sections",
            Instruction::Sections { .. } => "detectable_format:multiple_sections",
            Instruction::Json => "detectable_format:json_format",
            Instruction::Title => "detectable_format:title",
            Instruction::TwoResponses => "combination:two_responses",
            Instruction::RepeatPrompt(_) => "combination:repeat_prompt",
            Instruction::EndsWith(_) => "startend:end_checker",
            Instruction::StartsWith(_) => return None,
            Instruction::CapitalWords(..) => "change_case:capital_word_frequency",
            Instruction::Uppercase { .. } => "change_case:english_capital",
            Instruction::Lowercase { .. } => "change_case:english_lowercase",
            Instruction::NoCommas => "punctuation:no_comma",
            Instruction::Quoted => "startend:quotation",
        })
    }

    /// Whether `reply` follows the instruction.
    pub fn holds(&self, reply: &str) -> bool {
        match self {
            Instruction::Keywords(words) => {
                let lower = reply.to_lowercase();
                words.iter().all(|w| lower.contains(w.as_str()))
            }
            Instruction::KeywordFrequency { keyword, cmp, count } => {
                !keyword.is_empty() && cmp.holds(reply.to_lowercase().matches(keyword.as_str()).count(), *count)
            }
            Instruction::ForbiddenWords(words) => {
                let lower = reply.to_lowercase();
                !words.iter().any(|w| contains_word(&lower, w))
            }
            Instruction::LetterFrequency { letter, cmp, count } => {
                cmp.holds(reply.to_lowercase().chars().filter(|c| c == letter).count(), *count)
            }
            Instruction::Language(language) => in_language(reply, language.code),
            Instruction::Sentences(cmp, n) => cmp.holds(sentence_count(reply), *n),
            Instruction::Paragraphs { count, divider } => paragraphs_hold(reply, *count, *divider),
            Instruction::Words(cmp, n) => cmp.holds(word_count(reply), *n),
            Instruction::ParagraphFirstWord { paragraphs, nth, word } => {
                first_word_holds(reply, *paragraphs, *nth, word)
            }
            Instruction::Placeholders(n) => regex!(r"\[.*?\]").is_some_and(|r| r.find_iter(reply).count() >= *n),
            Instruction::Postscript(marker) => postscript_holds(reply, marker),
            Instruction::Bullets(n) => bullet_count(reply) == *n,
            Instruction::OneOf(options) => {
                let reply = reply.trim();
                options.iter().any(|o| reply.contains(o.as_str()))
            }
            Instruction::Highlights(n) => highlight_count(reply) >= *n,
            Instruction::Sections { splitter, count, exact_case } => {
                let case = if *exact_case { "" } else { "(?i)" };
                Regex::new(&format!(r"{case}\s?{}\s?\d+\s?", regex::escape(splitter)))
                    .is_ok_and(|r| r.find_iter(reply).count() >= *count)
            }
            Instruction::Json => {
                let t = reply.trim();
                let t = ["```json", "```Json", "```JSON", "```"].iter().find_map(|p| t.strip_prefix(p)).unwrap_or(t);
                let t = t.strip_suffix("```").unwrap_or(t).trim();
                serde_json::from_str::<serde_json::Value>(t).is_ok()
            }
            Instruction::Title => regex!(r"<<[^\n]+>>")
                .is_some_and(|r| r.find_iter(reply).any(|m| !m.as_str().trim_matches(['<', '>']).trim().is_empty())),
            Instruction::TwoResponses => two_responses_hold(reply),
            Instruction::RepeatPrompt(request) => {
                reply.trim().to_lowercase().starts_with(&request.trim().to_lowercase())
            }
            Instruction::EndsWith(phrase) => {
                reply.trim().trim_matches('"').to_lowercase().ends_with(&phrase.trim().to_lowercase())
            }
            Instruction::StartsWith(phrase) => reply.trim_start().to_lowercase().starts_with(&phrase.to_lowercase()),
            Instruction::CapitalWords(cmp, n) => cmp.holds(capital_word_count(reply), *n),
            Instruction::Uppercase { english } => is_upper(reply) && (!english || in_language(reply, "en")),
            Instruction::Lowercase { english } => is_lower(reply) && (!english || in_language(reply, "en")),
            Instruction::NoCommas => !reply.contains(','),
            Instruction::Quoted => {
                let t = reply.trim();
                t.chars().count() > 1 && t.starts_with('"') && t.ends_with('"')
            }
        }
    }
}

const NUMBER_WORDS: [&str; 21] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
];

const TENS: [(&str, usize); 8] = [
    ("thirty", 30),
    ("forty", 40),
    ("fifty", 50),
    ("sixty", 60),
    ("seventy", 70),
    ("eighty", 80),
    ("ninety", 90),
    ("hundred", 100),
];

/// A count: digits (with thousands separators) or a number word.
const NUM: &str = r"(\d[\d,]*|zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|a hundred|one hundred|a single|single)";

/// A count as in `NUM`, or once / twice / thrice.
const TIMES: &str = r"(\d[\d,]*|zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|a hundred|one hundred|a single|single|once|twice|thrice)";

/// A comparison, as IFEval writes it ("less than", "at least") and as people do.
const REL: &str = r"(exactly|precisely|at least|at most|no more than|not more than|no fewer than|no less than|not less than|less than|fewer than|under|below|more than|over|above|a minimum of|a maximum of|minimum of|maximum of|minimum|maximum|up to)";

fn number(text: &str) -> Option<usize> {
    let t = text.trim().to_lowercase();
    if let Ok(n) = t.replace(',', "").parse() {
        return Some(n);
    }
    match t.as_str() {
        "a single" | "single" | "once" => return Some(1),
        "twice" => return Some(2),
        "thrice" => return Some(3),
        "a hundred" | "one hundred" => return Some(100),
        _ => {}
    }
    NUMBER_WORDS.iter().position(|w| *w == t).or_else(|| TENS.iter().find(|(w, _)| *w == t).map(|(_, n)| *n))
}

fn comparison(word: &str) -> Cmp {
    match word.trim().to_lowercase().as_str() {
        "" | "exactly" | "precisely" => Cmp::Exactly,
        "at least" | "no fewer than" | "no less than" | "not less than" | "a minimum of" | "minimum of" | "minimum" => {
            Cmp::AtLeast
        }
        "at most" | "no more than" | "not more than" | "a maximum of" | "maximum of" | "maximum" | "up to" => {
            Cmp::AtMost
        }
        "less than" | "fewer than" | "under" | "below" => Cmp::Below,
        _ => Cmp::Above,
    }
}

/// The comparison of a relation word and a trailing "+", "or more" or "or less".
fn relation(rel: Option<&str>, plus: bool, or: Option<&str>) -> Cmp {
    match (plus, or.map(str::to_lowercase).as_deref()) {
        (true, _) | (_, Some("more")) => Cmp::AtLeast,
        (_, Some(_)) => Cmp::AtMost,
        _ => comparison(rel.unwrap_or("")),
    }
}

/// The languages a reply can be asked for: IFEval's 30 (`LANGUAGE_CODES`) and a few more that
/// `whatlang` detects, with the other names people give them.
const LANGUAGES: [(&str, &str, Option<whatlang::Lang>); 50] = {
    use whatlang::Lang::*;
    [
        ("en", "English", Some(Eng)),
        ("es", "Spanish", Some(Spa)),
        ("pt", "Portuguese", Some(Por)),
        ("ar", "Arabic", Some(Ara)),
        ("hi", "Hindi", Some(Hin)),
        ("fr", "French", Some(Fra)),
        ("ru", "Russian", Some(Rus)),
        ("de", "German", Some(Deu)),
        ("ja", "Japanese", Some(Jpn)),
        ("it", "Italian", Some(Ita)),
        ("bn", "Bengali", Some(Ben)),
        ("uk", "Ukrainian", Some(Ukr)),
        ("th", "Thai", Some(Tha)),
        ("ur", "Urdu", Some(Urd)),
        ("ta", "Tamil", Some(Tam)),
        ("te", "Telugu", Some(Tel)),
        ("bg", "Bulgarian", Some(Bul)),
        ("ko", "Korean", Some(Kor)),
        ("pl", "Polish", Some(Pol)),
        ("he", "Hebrew", Some(Heb)),
        ("fa", "Persian", Some(Pes)),
        ("vi", "Vietnamese", Some(Vie)),
        ("ne", "Nepali", Some(Nep)),
        ("sw", "Swahili", None),
        ("kn", "Kannada", Some(Kan)),
        ("mr", "Marathi", Some(Mar)),
        ("gu", "Gujarati", Some(Guj)),
        ("pa", "Punjabi", Some(Pan)),
        ("ml", "Malayalam", Some(Mal)),
        ("fi", "Finnish", Some(Fin)),
        ("bn", "Bangla", Some(Ben)),
        ("fa", "Farsi", Some(Pes)),
        ("pa", "Panjabi", Some(Pan)),
        ("zh", "Chinese", Some(Cmn)),
        ("zh", "Mandarin", Some(Cmn)),
        ("nl", "Dutch", Some(Nld)),
        ("sv", "Swedish", Some(Swe)),
        ("da", "Danish", Some(Dan)),
        ("no", "Norwegian", Some(Nob)),
        ("tr", "Turkish", Some(Tur)),
        ("el", "Greek", Some(Ell)),
        ("cs", "Czech", Some(Ces)),
        ("ro", "Romanian", Some(Ron)),
        ("hu", "Hungarian", Some(Hun)),
        ("id", "Indonesian", Some(Ind)),
        ("ca", "Catalan", Some(Cat)),
        ("hr", "Croatian", Some(Hrv)),
        ("sr", "Serbian", Some(Srp)),
        ("sk", "Slovak", Some(Slk)),
        ("af", "Afrikaans", Some(Afr)),
    ]
};

/// Swahili's commonest words, none of them English: `whatlang` does not know Swahili.
const SWAHILI: [&str; 40] = [
    "na", "ya", "wa", "kwa", "ni", "za", "katika", "la", "kuwa", "hii", "hiyo", "huo", "ambao", "ambayo", "ambaye",
    "yake", "wake", "zake", "lakini", "pia", "sana", "kama", "hata", "baada", "kabla", "cha", "vya", "kila", "wao",
    "sisi", "mimi", "wewe", "yeye", "hapa", "kutoka", "hadi", "bila", "zaidi", "ndani", "watu",
];

/// Below this `whatlang` confidence (its margin between the best two languages) a detection is a
/// guess: a few words ("hello neighbour, our grey cat is missing." reads as Danish at 0.06;
/// whole sentences score 0.5 to 1).
const MIN_CONFIDENCE: f64 = 0.2;

/// Whether `text` is in the language with this ISO 639-1 code. Text in which no language can be
/// detected passes, as in IFEval, and so does text too short to tell (under [`MIN_CONFIDENCE`]):
/// a short reply is not marked down for a guess.
fn in_language(text: &str, code: &str) -> bool {
    let Some(info) = whatlang::detect(text) else { return true };
    if code == "sw" {
        let words: Vec<String> = word_tokens(text).map(str::to_lowercase).collect();
        let common = words.iter().filter(|w| SWAHILI.contains(&w.as_str())).count();
        return info.script() == whatlang::Script::Latin && !words.is_empty() && common * 10 >= words.len();
    }
    info.confidence() < MIN_CONFIDENCE || LANGUAGES.iter().any(|(c, _, lang)| *c == code && *lang == Some(info.lang()))
}

fn word_tokens(text: &str) -> impl Iterator<Item = &str> {
    regex!(r"\w+").into_iter().flat_map(move |r| r.find_iter(text).map(|m| m.as_str()))
}

/// IFEval's `count_words`: `\w+` tokens.
fn word_count(text: &str) -> usize {
    word_tokens(text).count()
}

/// Python's `str.isupper()`: a capital letter and no lowercase one.
fn is_upper(text: &str) -> bool {
    text.chars().any(char::is_uppercase) && !text.chars().any(char::is_lowercase)
}

/// Python's `str.islower()`: a lowercase letter and no capital one.
fn is_lower(text: &str) -> bool {
    text.chars().any(char::is_lowercase) && !text.chars().any(char::is_uppercase)
}

/// Words in all capitals (`\w+` tokens joined by hyphens, as NLTK keeps "COVID-19" one token).
fn capital_word_count(text: &str) -> usize {
    regex!(r"\w+(?:-\w+)*").map_or(0, |r| r.find_iter(text).filter(|m| is_upper(m.as_str())).count())
}

/// Whether `needle` (lowercase) occurs in `hay` (lowercase) as a whole word, as IFEval's
/// `\bword\b`.
fn contains_word(hay: &str, needle: &str) -> bool {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let (first, last) = (needle.chars().next(), needle.chars().last());
    !needle.is_empty()
        && hay.match_indices(needle).any(|(at, m)| {
            let before = hay[..at].chars().next_back();
            let after = hay[at + m.len()..].chars().next();
            (!word(first) || !word(before)) && (!word(last) || !word(after))
        })
}

/// IFEval's `split_into_sentences` (instructions_util.py), rule for rule.
fn split_into_sentences(text: &str) -> Vec<String> {
    const ALPHA: &str = "([A-Za-z])";
    const STARTERS: &str = r"(Mr|Mrs|Ms|Dr|Prof|Capt|Cpt|Lt|He\s|She\s|It\s|They\s|Their\s|Our\s|We\s|But\s|However\s|That\s|This\s|Wherever)";
    const SUFFIXES: &str = "(Inc|Ltd|Jr|Sr|Co)";
    fn sub(re: Option<&Regex>, text: String, with: &str) -> String {
        match re {
            Some(r) => r.replace_all(&text, with).into_owned(),
            None => text,
        }
    }
    let mut t = format!(" {text}  ").replace('\n', " ");
    t = sub(regex!(r"(Mr|St|Mrs|Ms|Dr)[.]"), t, "${1}<prd>");
    t = sub(regex!(r"[.](com|net|org|io|gov|edu|me)"), t, "<prd>${1}");
    t = sub(regex!(r"([0-9])[.]([0-9])"), t, "${1}<prd>${2}");
    if let Some(r) = regex!(r"\.{2,}") {
        t = r.replace_all(&t, |c: &regex::Captures| "<prd>".repeat(c[0].len()) + "<stop>").into_owned();
    }
    if t.contains("Ph.D") {
        t = t.replace("Ph.D.", "Ph<prd>D<prd>");
    }
    t = sub(regex!(format!(r"\s{ALPHA}[.] ")), t, " ${1}<prd> ");
    t = sub(regex!(format!(r"([A-Z][.][A-Z][.](?:[A-Z][.])?) {STARTERS}")), t, "${1}<stop> ${2}");
    t = sub(regex!(format!("{ALPHA}[.]{ALPHA}[.]{ALPHA}[.]")), t, "${1}<prd>${2}<prd>${3}<prd>");
    t = sub(regex!(format!("{ALPHA}[.]{ALPHA}[.]")), t, "${1}<prd>${2}<prd>");
    t = sub(regex!(format!(" {SUFFIXES}[.] {STARTERS}")), t, " ${1}<stop> ${2}");
    t = sub(regex!(format!(" {SUFFIXES}[.]")), t, " ${1}<prd>");
    t = sub(regex!(format!(" {ALPHA}[.]")), t, " ${1}<prd>");
    t = t.replace(".”", "”.").replace(".\"", "\".").replace("!\"", "\"!").replace("?\"", "\"?");
    t = t.replace('.', ".<stop>").replace('?', "?<stop>").replace('!', "!<stop>").replace("<prd>", ".");
    let mut sentences: Vec<String> = t.split("<stop>").map(|s| s.trim().to_string()).collect();
    if sentences.last().is_some_and(String::is_empty) {
        sentences.pop();
    }
    sentences
}

/// Sentences with a letter or digit in them (punkt, which IFEval counts with, does not count a
/// lone "!" as a sentence).
fn sentence_count(text: &str) -> usize {
    split_into_sentences(text).iter().filter(|s| s.chars().any(char::is_alphanumeric)).count()
}

fn paragraphs_hold(reply: &str, count: usize, divider: Divider) -> bool {
    match divider {
        Divider::Markdown => {
            // IFEval: split on `\s?\*\*\*\s?`; empty first and last parts do not count, an empty
            // part between two dividers fails.
            let Some(r) = regex!(r"\s?\*\*\*\s?") else { return false };
            let parts: Vec<&str> = r.split(reply).collect();
            let mut n = parts.len();
            for (i, p) in parts.iter().enumerate() {
                if p.trim().is_empty() {
                    if i == 0 || i == parts.len() - 1 {
                        n -= 1;
                    } else {
                        return false;
                    }
                }
            }
            n == count
        }
        Divider::BlankLine => reply.split("\n\n").filter(|p| !p.trim().is_empty()).count() == count,
        Divider::Either => {
            regex!(r"\*\*\*|\n\s*\n").is_some_and(|r| r.split(reply).filter(|p| !p.trim().is_empty()).count() == count)
        }
    }
}

/// IFEval's `ParagraphFirstWordCheck`.
fn first_word_holds(reply: &str, paragraphs: Option<usize>, nth: usize, word: &str) -> bool {
    let parts: Vec<&str> = reply.split("\n\n").collect();
    let n = parts.iter().filter(|p| !p.trim().is_empty()).count();
    if nth == 0 || nth > n {
        return false;
    }
    let Some(paragraph) = parts.get(nth - 1).map(|p| p.trim()) else { return false };
    let Some(first) = paragraph.split_whitespace().next() else { return false };
    let first: String = first
        .trim_start_matches('\'')
        .trim_start_matches('"')
        .chars()
        .take_while(|c| !matches!(c, '.' | ',' | '?' | '!' | '\'' | '"'))
        .flat_map(char::to_lowercase)
        .collect();
    paragraphs.is_none_or(|p| p == n) && first == word
}

fn postscript_holds(reply: &str, marker: &str) -> bool {
    let lower = reply.to_lowercase();
    match marker {
        "P.P.S" => regex!(r"p\.\s?p\.\s?s").is_some_and(|r| r.is_match(&lower)),
        "P.S." => regex!(r"p\.\s?s\.").is_some_and(|r| r.is_match(&lower)),
        other => lower.contains(&other.to_lowercase()),
    }
}

/// IFEval's bullet count: lines starting (after spaces) with `*` not followed by `*`, or `-`.
fn bullet_count(reply: &str) -> usize {
    reply
        .lines()
        .map(str::trim_start)
        .filter(|l| {
            let mut c = l.chars();
            match c.next() {
                Some('*') => c.next().is_some_and(|n| n != '*'),
                Some('-') => true,
                _ => false,
            }
        })
        .count()
}

/// IFEval's highlight count: `*text*` and `**text**` with something in them.
fn highlight_count(reply: &str) -> usize {
    let single = regex!(r"\*[^\n\*]*\*")
        .map_or(0, |r| r.find_iter(reply).filter(|m| !m.as_str().trim_matches('*').trim().is_empty()).count());
    let double = regex!(r"\*\*[^\n\*]*\*\*").map_or(0, |r| {
        r.find_iter(reply)
            .filter(|m| {
                let s = m.as_str();
                !s.strip_prefix("**").and_then(|s| s.strip_suffix("**")).unwrap_or(s).trim().is_empty()
            })
            .count()
    });
    single + double
}

/// IFEval's `TwoResponsesChecker`.
fn two_responses_hold(reply: &str) -> bool {
    let parts: Vec<&str> = reply.split("******").collect();
    let mut valid = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if p.trim().is_empty() {
            if i != 0 && i != parts.len() - 1 {
                return false;
            }
        } else {
            valid.push(p.trim());
        }
    }
    valid.len() == 2 && valid[0] != valid[1]
}

// ---------------------------------------------------------------------------------------------
// Reading a prompt.

/// One match, its groups copied out so the text can be blanked while the matches are walked.
struct Hit {
    all: Range<usize>,
    groups: Vec<Option<String>>,
}

impl Hit {
    fn get(&self, i: usize) -> Option<&str> {
        self.groups.get(i).and_then(|g| g.as_deref())
    }
}

fn hits(re: Option<&Regex>, text: &str) -> Vec<Hit> {
    let Some(re) = re else { return Vec::new() };
    re.captures_iter(text)
        .filter_map(|c| {
            let all = c.get(0)?.range();
            let groups = c.iter().map(|g| g.map(|m| m.as_str().to_string())).collect();
            Some(Hit { all, groups })
        })
        .collect()
}

/// The prompt being read: its text with what has been read blanked (same byte offsets), and
/// what was found, with where.
struct Reader {
    text: String,
    found: Vec<(usize, Instruction)>,
}

impl Reader {
    fn take(&mut self, range: Range<usize>) {
        let range = range.start.min(self.text.len())..range.end.min(self.text.len());
        if self.text.is_char_boundary(range.start) && self.text.is_char_boundary(range.end) {
            let blank = " ".repeat(range.len());
            self.text.replace_range(range, &blank);
        }
    }

    fn push(&mut self, at: usize, instruction: Instruction) {
        if !self.found.iter().any(|(_, i)| *i == instruction) {
            self.found.push((at, instruction));
        }
    }

    fn hits(&self, re: Option<&Regex>) -> Vec<Hit> {
        hits(re, &self.text)
    }

    /// The sentence around `at`: from after the last `.`, `!`, `?` or newline before it to the
    /// next one.
    fn sentence(&self, at: Range<usize>) -> Range<usize> {
        let stop = |c: char| matches!(c, '.' | '!' | '?' | '\n');
        let start = self.text[..at.start].rfind(stop).map_or(0, |i| i + 1);
        let end = self.text[at.end..].find(stop).map_or(self.text.len(), |i| at.end + i);
        start..end
    }
}

/// Blanks every match of a phrase that says nothing to check but could be misread later.
fn blank_all(reader: &mut Reader, re: Option<&Regex>) {
    for h in reader.hits(re) {
        reader.take(h.all);
    }
}

/// A quoted phrase (`"..."`, `'...'`, curly quotes) or a bare word; the text without quotes.
const QUOTED_OR_WORD: &str = r#"(["“][^"”\n]+["”]|['‘][^'’\n]+['’]|[\w'’-]+)"#;
const QUOTED: &str = r#"(["“][^"”\n]+["”]|['‘][^'’\n]+['’])"#;

fn unquote(s: &str) -> &str {
    let t = s.trim();
    let inner = t.strip_prefix(['"', '“']).and_then(|t| t.strip_suffix(['"', '”']));
    let inner = inner.or_else(|| t.strip_prefix(['\'', '‘']).and_then(|t| t.strip_suffix(['\'', '’'])));
    inner.map_or(t, str::trim)
}

/// The items, as written, of a list that starts `text`: a Python list or tuple (`['a', 'b']`),
/// quoted items separated by commas, "and", "or", or (when `bare` is allowed) bare words up to
/// the end of the sentence. Returns the items and how many bytes of `text` they take.
fn list_items(text: &str, bare: bool) -> (Vec<String>, usize) {
    let mut items = Vec::new();
    let mut at = 0;
    let rest = |at: usize| &text[at..];
    let skip = regex!(r"^(?:\s|,|;|:|\band\b|\bor\b|\bnor\b|\[|\(|\])*");
    let item = regex!(r#"^(?:["“]([^"”\n]*)["”]|['‘]([^'’\n]*)['’])"#);
    loop {
        let skipped = skip.and_then(|r| r.find(rest(at))).map_or(0, |m| m.end());
        let Some(c) = item.and_then(|r| r.captures(rest(at + skipped))) else { break };
        let (Some(whole), Some(inner)) = (c.get(0), (1..=2).find_map(|i| c.get(i))) else { break };
        let word = inner.as_str().trim().to_string();
        at += skipped + whole.end();
        if !word.is_empty() {
            items.push(word);
        }
    }
    if !items.is_empty() {
        if let Some(m) = regex!(r"^\s*[\])]").and_then(|r| r.find(rest(at))) {
            at += m.end();
        }
        return (items, at);
    }
    if !bare {
        return (items, 0);
    }
    let end = regex!(r"(?i)[.;!?\n]|\s+in (?:your|the) (?:response|answer|reply)")
        .and_then(|r| r.find(text))
        .map_or(text.len(), |m| m.start());
    let words: Vec<String> = text[..end]
        .split([',', '/'])
        .flat_map(|s| s.split(" and ").flat_map(|s| s.split(" or ")))
        .map(|s| s.trim().trim_start_matches("and ").trim_start_matches("or ").trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if words.is_empty() || words.iter().any(|w| w.split_whitespace().count() > 3) {
        return (Vec::new(), 0);
    }
    (words, end)
}

/// Whether the words just before `at` (in its sentence) negate what follows ("no capital
/// letters", "do not use any commas", "without using").
fn negated(reader: &Reader, at: usize) -> bool {
    let sentence = reader.sentence(at..at);
    let before = &reader.text[sentence.start..at];
    regex!(
        r"(?i)(?:\b(?:no|not|without|never|avoid|refrain from|nor|zero)|n['’]t)(?:\s+(?:any|use|using|the|of|allowed|to|be|contain|contains|containing|include|includes|including|have|has|having|with|a|single|are|is|should|must|other|write|written|in|type|typing))*\s*$"
    )
    .is_some_and(|r| r.is_match(before))
}

/// The checks a prompt states: every recognised instruction, in the order they appear.
pub fn parse(prompt: &str) -> Vec<Instruction> {
    let mut r = Reader { text: prompt.to_string(), found: Vec::new() };
    repeat_prompt(&mut r, prompt);
    two_responses(&mut r);
    constrained_response(&mut r);
    end_phrase(&mut r);
    postscript(&mut r);
    paragraph_first_word(&mut r);
    start_phrase(&mut r);
    capital_words(&mut r);
    letter_frequency(&mut r);
    keyword_frequency(&mut r);
    forbidden_words(&mut r);
    keywords(&mut r);
    case(&mut r);
    language(&mut r);
    quotation(&mut r);
    title(&mut r);
    json(&mut r);
    highlights(&mut r);
    sections(&mut r);
    paragraphs(&mut r);
    counted(&mut r);
    no_commas(&mut r);
    let mut found = r.found;
    found.sort_by_key(|(at, _)| *at);
    found.into_iter().map(|(_, i)| i).collect()
}

/// "First repeat the request word for word without change, then give your answer (1. do not
/// say any words or characters before repeating the request; 2. the request you need to repeat
/// does not include this sentence)": the request is the rest of the prompt.
fn repeat_prompt(r: &mut Reader, prompt: &str) {
    let re = regex!(
        r"(?i)(?:first,?\s+)?repeat\s+the\s+(?:request|question|prompt|instruction)s?(?:\s+above|\s+below)?\s+word\s+for\s+word(?:\s+without\s+(?:any\s+)?change)?(?:,?\s*(?:and\s+)?then\s+(?:give|provide|write)\s+your\s+answer)?(?:\s*\([^)]*\))?\.?"
    );
    if let Some(h) = r.hits(re).into_iter().next() {
        let before = prompt[..h.all.start].trim();
        let request = if before.is_empty() { prompt[h.all.end..].trim() } else { before };
        if !request.is_empty() {
            r.push(h.all.start, Instruction::RepeatPrompt(request.to_string()));
        }
        r.take(h.all);
    }
}

/// "Give two different responses. Responses and only responses should be separated by 6
/// asterisk symbols: ******."
fn two_responses(r: &mut Reader) {
    let re = regex!(r"(?i)\b(?:6|six)\s+asterisks?(?:\s+symbols?)?\s*:?\s*(?:\*\*\*\*\*\*)?\.?");
    for h in r.hits(re) {
        let sentence = r.sentence(h.all.clone());
        if !regex!(r"(?i)separat").is_some_and(|x| x.is_match(&r.text[sentence.start..h.all.start])) {
            continue;
        }
        r.push(h.all.start, Instruction::TwoResponses);
        r.take(sentence.start..h.all.end);
    }
    if r.found.iter().any(|(_, i)| *i == Instruction::TwoResponses) {
        blank_all(
            r,
            regex!(r"(?i)\b(?:give|provide|write)\s+(?:exactly\s+)?two\s+different\s+(?:responses|answers)\b\.?"),
        );
    }
}

/// "Answer with one of the following options: ('My answer is yes.', 'My answer is no.', 'My
/// answer is maybe.')"
fn constrained_response(r: &mut Reader) {
    let re = regex!(
        r"(?i)\b(?:(?:answer|respond|reply)\s+with\s+)?(?:(?:exactly\s+)?one\s+of\s+the\s+following\s+(?:options|phrases|exact\s+phrases|choices|answers)|choose\s+from(?:\s+the\s+following)?)\s*:?"
    );
    for h in r.hits(re) {
        let (items, len) = list_items(&r.text[h.all.end..], false);
        if items.is_empty() {
            continue;
        }
        // The options keep their case: IFEval looks for them as written.
        r.push(h.all.start, Instruction::OneOf(items));
        r.take(h.all.start..h.all.end + len);
    }
}

/// "Finish your response with this exact phrase {ender}. No other words should follow this
/// phrase.", "end it with "...""; "the very last sentence of your response should be "...""
fn end_phrase(r: &mut Reader) {
    const LEAD: &str = r"(?i)\b(?:(?:end|finish|conclude|close)(?:s|es|ed)?\s+(?:\w+\s+){0,3}?with|(?:the\s+)?(?:very\s+)?last\s+(?:sentence|line)\s+of\s+(?:your|the)\s+\w+\s+(?:should|must)\s+be)\s*";
    const EXACT: &str = r"(?:(?:this|the|a|an|following)\s+)?(exact\s+)?(?:(?:phrase|sentence|words?|question|line)\s*)?(?:of\s+)?:?\s*";
    let quoted = regex!(format!("{LEAD}{EXACT}{QUOTED}"));
    for h in r.hits(quoted) {
        if let Some(phrase) = h.get(2).map(unquote).filter(|p| !p.is_empty()) {
            r.push(h.all.start, Instruction::EndsWith(phrase.to_string()));
            r.take(h.all);
        }
    }
    // Unquoted, as IFEval fills its template: only after "exact phrase", up to ". No other
    // words" or the end of the line.
    let bare = regex!(format!(r"(?m){LEAD}{EXACT}([^\n]+?)(?:\.\s+no other words|\.?\s*$)"));
    for h in r.hits(bare) {
        if h.get(1).is_none() {
            continue;
        }
        if let Some(phrase) = h.get(2).map(str::trim).filter(|p| !p.is_empty()) {
            r.push(h.all.start, Instruction::EndsWith(phrase.to_string()));
            r.take(h.all);
        }
    }
    blank_all(
        r,
        regex!(r"(?i)(?:no|with no) other words should (?:follow|come after) (?:this|the) (?:phrase|sentence)\.?"),
    );
}

/// "At the end of your response, please explicitly add a postscript starting with P.S."
fn postscript(r: &mut Reader) {
    let re = regex!(
        r#"(?i)\b(?:starting|beginning|starts|begins|start|begin)\s+with\s+["'“]?(p\.\s?p\.\s?s\.?|p\.\s?s\.?)["'”]?"#
    );
    for h in r.hits(re) {
        let Some(marker) = h.get(1) else { continue };
        let marker = if marker.to_lowercase().matches('p').count() > 1 { "P.P.S" } else { "P.S." };
        r.push(h.all.start, Instruction::Postscript(marker.to_string()));
        r.take(h.all);
    }
}

const ORDINALS: [&str; 10] =
    ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth"];

/// "There should be {N} paragraphs. Paragraphs and only paragraphs are separated with each
/// other by two new lines as if it was '\n\n' in python. Paragraph {nth} must start with word
/// {first_word}."
fn paragraph_first_word(r: &mut Reader) {
    let re = regex!(format!(
        r"(?i)\b(?:the\s+)?(?:paragraph\s+(?:number\s+|#)?{NUM}|(first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|\d+(?:st|nd|rd|th))\s+paragraph)\s+(?:must|should|has\s+to|needs\s+to|is\s+to|to)\s+(?:start|begin)\s+with\s+(?:the\s+)?(?:word\s+)?{QUOTED_OR_WORD}\.?"
    ));
    let Some(h) = r.hits(re).into_iter().next() else { return };
    let nth = h.get(1).and_then(number).or_else(|| {
        let o = h.get(2)?.to_lowercase();
        ORDINALS
            .iter()
            .position(|w| *w == o)
            .map(|i| i + 1)
            .or_else(|| o.trim_end_matches(char::is_alphabetic).parse().ok())
    });
    let (Some(nth), Some(word)) = (nth, h.get(3).map(|w| unquote(w).to_lowercase())) else { return };
    r.take(h.all.clone());
    let count = r.hits(regex!(format!(r"(?i)\b(?:exactly\s+)?{NUM}[\s-]+paragraphs?\b"))).into_iter().next();
    let paragraphs = count.as_ref().and_then(|c| c.get(1)).and_then(number);
    if let Some(c) = count {
        r.take(c.all);
    }
    blank_all(r, regex!(r"(?i)paragraphs\s+and\s+only\s+paragraphs\s+are\s+separated[^.\n]*\.?"));
    r.push(h.all.start, Instruction::ParagraphFirstWord { paragraphs, nth, word });
}

/// "start / begin your response with "..."", and IFEval's multi-turn "During the conversation,
/// when it is your turn, please always start with {starter}".
fn start_phrase(r: &mut Reader) {
    let re = regex!(format!(
        r"(?i)\b(?:start|begin)s?\s+(?:\w+\s+){{0,3}}?with\s+(?:(?:this|the|a|an|following)\s+)?(?:exact\s+)?(?:(?:phrase|sentence|words?|line)\s+)?:?\s*{QUOTED}"
    ));
    for h in r.hits(re) {
        if let Some(phrase) = h.get(1).map(unquote).filter(|p| !p.is_empty()) {
            r.push(h.all.start, Instruction::StartsWith(phrase.to_string()));
            r.take(h.all);
        }
    }
    let turn = regex!(r"(?im)\bwhen\s+it\s+is\s+your\s+turn,?\s+(?:please\s+)?always\s+start\s+with\s+([^\n]+?)\s*$");
    for h in r.hits(turn) {
        if let Some(phrase) = h.get(1).map(unquote).filter(|p| !p.is_empty()) {
            r.push(h.all.start, Instruction::StartsWith(phrase.to_string()));
            r.take(h.all);
        }
    }
}

/// A count as people write it after a mention: "{relation} {N} times", "N or more times",
/// "at least twice".
fn count_after(text: &str) -> Option<(Cmp, usize, usize)> {
    // Groups: 1 relation, 2 count, 3 "+", 4 "or more" before "times", 5 "times", 6 "or more" after.
    let re = regex!(format!(
        r"(?i)^[^.\n]*?\b(?:{REL}\s+)?{TIMES}(\+)?(?:\s+or\s+(more|less|fewer))?(\s+times?)?\b(?:\s+or\s+(more|less|fewer))?"
    ));
    let c = re?.captures(text)?;
    let n_text = c.get(2)?.as_str().to_lowercase();
    let spoken = matches!(n_text.as_str(), "once" | "twice" | "thrice");
    if !(spoken || c.get(5).is_some() || c.get(1).is_some() || c.get(4).is_some() || c.get(6).is_some()) {
        return None;
    }
    let or = c.get(4).or(c.get(6)).map(|m| m.as_str());
    Some((relation(c.get(1).map(|m| m.as_str()), c.get(3).is_some(), or), number(&n_text)?, c.get(0)?.end()))
}

/// "In your response, words with all capital letters should appear {relation} {N} times."
fn capital_words(r: &mut Reader) {
    let re = regex!(format!(
        r"(?i)\b(?:{REL}\s+)?(?:{NUM}\s+)?(?:words?|tokens?)\s+(?:with|in|written\s+in|using|that\s+are\s+in|that\s+use)\s+all[\s-]+(?:capital\s+letters|capitals|caps|uppercase(?:\s+letters)?)\b|\b(?:{REL}\s+)?(?:{NUM}\s+)?(?:all[\s-]+caps|all[\s-]+capital|capitali[sz]ed|fully\s+capitali[sz]ed|uppercase|upper-case)\s+words\b"
    ));
    let mentions = r.hits(re);
    for (i, h) in mentions.iter().enumerate() {
        let prefix_n = h.get(2).or(h.get(4)).and_then(number);
        let prefix_rel = h.get(1).or(h.get(3));
        let (cmp, n, end) = match prefix_n {
            Some(n) => (comparison(prefix_rel.unwrap_or("at least")), n, h.all.end),
            None => {
                let stop = mentions.get(i + 1).map_or(r.text.len(), |m| m.all.start);
                match count_after(&r.text[h.all.end..stop]) {
                    Some((cmp, n, len)) => (cmp, n, h.all.end + len),
                    None => (Cmp::AtLeast, 1, h.all.end),
                }
            }
        };
        r.push(h.all.start, Instruction::CapitalWords(cmp, n));
        r.take(h.all.start..end);
    }
}

/// "In your response, the letter {letter} should appear {relation} {N} times."; "do not use
/// the letter e" (less than once).
fn letter_frequency(r: &mut Reader) {
    let never = regex!(
        r#"(?i)\b(?:do\s+not|don't|don’t|never|must\s+not|should\s+not|without)\s+(?:use|using|include|including|write|writing)?\s*(?:the\s+)?letter\s+["'“‘]?(\w)\b["'”’]?"#
    );
    for h in r.hits(never) {
        let Some(letter) = h.get(1).and_then(|l| l.to_lowercase().chars().next()) else { continue };
        r.push(h.all.start, Instruction::LetterFrequency { letter, cmp: Cmp::Below, count: 1 });
        r.take(h.all);
    }
    let re = regex!(
        r#"(?i)\b(?:use\s+)?the\s+letter\s+["'“‘]?(\w)\b["'”’]?(?:\s+(?:should|must|has\s+to|needs\s+to|is\s+to|to))?(?:\s+(?:appear|occur|be\s+used|show\s+up))?(?:\s+in\s+your\s+(?:entire\s+)?(?:response|answer))?(?:\s+for)?"#
    );
    for h in r.hits(re) {
        let Some(letter) = h.get(1).and_then(|l| l.to_lowercase().chars().next()) else { continue };
        let Some((cmp, n, len)) = count_after(&r.text[h.all.end..]) else { continue };
        if len > 40 {
            continue;
        }
        r.push(h.all.start, Instruction::LetterFrequency { letter, cmp, count: n });
        r.take(h.all.start..h.all.end + len);
    }
}

/// "In your response, the word {keyword} should appear {relation} {N} times."; "use the word X
/// at least twice".
fn keyword_frequency(r: &mut Reader) {
    let re = regex!(format!(
        r"(?i)\b(?:(?:use|include|mention|repeat|say|write)\s+)?the\s+(?:key)?word\s+{QUOTED_OR_WORD}(?:\s+(?:should|must|has\s+to|needs\s+to|is\s+to|to))?(?:\s+(?:appear|occur|be\s+used|be\s+mentioned|be\s+repeated|show\s+up|be\s+included))?(?:\s+in\s+your\s+(?:entire\s+)?(?:response|answer))?(?:\s+for)?"
    ));
    for h in r.hits(re) {
        let Some(word) = h.get(1).map(|w| unquote(w).to_lowercase()).filter(|w| !w.is_empty()) else { continue };
        let Some((cmp, n, len)) = count_after(&r.text[h.all.end..]) else { continue };
        if len > 40 {
            continue;
        }
        r.push(h.all.start, Instruction::KeywordFrequency { keyword: word, cmp, count: n });
        r.take(h.all.start..h.all.end + len);
    }
}

/// "Do not include keywords ['a', 'b'] in the response."; "the word "x" should not appear".
fn forbidden_words(r: &mut Reader) {
    let re = regex!(
        r"(?i)(?:\b(?:do\s+not|don't|don’t|never|must\s+not|should\s+not|cannot|can't|may\s+not)\s+(?:use|include|mention|say|contain|write|add)|\bwithout(?:\s+(?:using|including|mentioning|saying))?|\bavoid(?:\s+(?:using|mentioning|saying|including))?|\bexclude|\brefrain\s+from\s+(?:using|mentioning|saying))\s+(?:any\s+of\s+)?(?:the\s+)?(?:following\s+)?(?:((?:key)?words?)\b\s*:?\s*)?"
    );
    for h in r.hits(re) {
        let bare = h.get(1).is_some_and(|w| w.to_lowercase().starts_with("key")) || r.text[..h.all.end].ends_with(':');
        let (items, len) = list_items(&r.text[h.all.end..], bare);
        if items.is_empty() {
            continue;
        }
        let words = items.iter().map(|w| w.to_lowercase()).collect();
        r.push(h.all.start, Instruction::ForbiddenWords(words));
        r.take(h.all.start..h.all.end + len);
    }
    let single = regex!(format!(
        r"(?i)\bthe\s+(?:key)?words?\s+{QUOTED_OR_WORD}\s+(?:should|must|may|can|will)\s*(?:not|never)\s+(?:appear|be\s+used|be\s+included|be\s+mentioned|occur|show\s+up)"
    ));
    for h in r.hits(single) {
        if let Some(word) = h.get(1).map(|w| unquote(w).to_lowercase()).filter(|w| !w.is_empty()) {
            r.push(h.all.start, Instruction::ForbiddenWords(vec![word]));
            r.take(h.all);
        }
    }
}

/// "Include keywords ['a', 'b'] in the response."; "include the keywords "a" and "b"", "mention
/// "a" in the post".
fn keywords(r: &mut Reader) {
    let quoted = regex!(format!(r"(?i)\b(?:mention|include|use)\s+(?:the\s+(?:name|term|phrase)\s+)?{QUOTED}"));
    for h in r.hits(quoted) {
        if negated(r, h.all.start) {
            continue;
        }
        if let Some(word) = h.get(1).map(|w| unquote(w).to_lowercase()).filter(|w| !w.is_empty()) {
            r.push(h.all.start, Instruction::Keywords(vec![word]));
            r.take(h.all);
        }
    }
    let re = regex!(
        r"(?i)\b(?:include|including|includes|contain|containing|contains|mention|mentioning)\s+(?:all\s+(?:of\s+)?)?(?:the\s+)?(?:following\s+)?((?:key)?words?)\b\s*:?\s*"
    );
    for h in r.hits(re) {
        if negated(r, h.all.start) {
            continue;
        }
        let bare = h.get(1).is_some_and(|w| w.to_lowercase().starts_with("key")) || r.text[..h.all.end].ends_with(':');
        let (items, len) = list_items(&r.text[h.all.end..], bare);
        if items.is_empty() {
            continue;
        }
        let words = items.iter().map(|w| w.to_lowercase()).collect();
        r.push(h.all.start, Instruction::Keywords(words));
        r.take(h.all.start..h.all.end + len);
    }
}

/// IFEval's "Your entire response should be in English, and in all lowercase letters. No capital
/// letters are allowed." and "... in English, and in all capital letters.", and the plain
/// "all lowercase" / "all capital letters" / "all caps". A negated mention is the opposite
/// request ("no capital letters", "no lowercase letters allowed"); a negated "all caps" asks for
/// nothing checkable. A prompt that asks for both (a capitalised title, the rest in lowercase)
/// gets neither: no whole-reply check can hold for both.
fn case(r: &mut Reader) {
    let re = regex!(
        r"(?i)\b(all\s+(?:in\s+)?)?(?:(lower[\s-]?case(?:\s+letters?)?|small\s+letters)|(upper[\s-]?case(?:\s+letters)?|capital\s+letters|block\s+capitals|capitals|caps))\b"
    );
    // Where each request was first seen, and whether it also asks for English.
    let (mut lower, mut upper) = (None::<(usize, bool)>, None::<(usize, bool)>);
    for h in r.hits(re) {
        let all = h.get(1).is_some();
        let up = h.get(3).is_some();
        let bare_word = h.get(3).is_some_and(|w| matches!(w.to_lowercase().as_str(), "capitals" | "caps"));
        let no = negated(r, h.all.start);
        if bare_word && !all && !no && !r.text[..h.all.start].to_lowercase().trim_end().ends_with(" in") {
            continue; // "European capitals", "baseball caps"
        }
        let sentence = r.sentence(h.all.clone());
        r.take(h.all.clone());
        if no && all {
            continue;
        }
        let wants_upper = up != no;
        let english = r
            .hits(regex!(r"(?i)\b(?:in|be\s+in|using|use)\s+english\b"))
            .into_iter()
            .find(|e| e.all.start >= sentence.start && e.all.end <= sentence.end);
        let english = english.map(|e| r.take(e.all)).is_some();
        let slot = if wants_upper { &mut upper } else { &mut lower };
        *slot = Some(match *slot {
            Some((at, e)) => (at, e || english),
            None => (h.all.start, english),
        });
    }
    match (lower, upper) {
        (Some((at, english)), None) => r.push(at, Instruction::Lowercase { english }),
        (None, Some((at, english))) => r.push(at, Instruction::Uppercase { english }),
        _ => {}
    }
}

/// IFEval's "Your ENTIRE response should be in {language} language, no other language is
/// allowed.", and "respond in French", "using only the Kannada language", ...
fn language(r: &mut Reader) {
    let re = regex!(format!(
        r"(?i)\b(?:in|using|use)\s+(?:only\s+)?(?:the\s+)?({})(\s+language)?\b(\s+only\b)?",
        LANGUAGES.iter().map(|(_, name, _)| *name).collect::<Vec<_>>().join("|")
    ));
    for h in r.hits(re) {
        let Some(name) = h.get(1) else { continue };
        let after = &r.text[h.all.end..];
        let ends = regex!(r"^\s*(?:[,.;:!?)]|$|no\s+other|and\s+no\s+other)").is_some_and(|x| x.is_match(after));
        let stated =
            h.get(2).is_some() || h.get(3).is_some() || r.text[..h.all.start].to_lowercase().ends_with("only ");
        let sentence = r.sentence(h.all.clone());
        let about_reply = regex!(r"(?i)respon|answer|reply|output|writ|text|speak|only")
            .is_some_and(|x| x.is_match(&r.text[sentence.start..h.all.start]));
        if !(ends || stated) || !about_reply {
            continue;
        }
        let Some((code, name, _)) = LANGUAGES.iter().find(|(_, n, _)| n.eq_ignore_ascii_case(name)) else { continue };
        let canonical = LANGUAGES.iter().find(|(c, _, _)| c == code).map_or(*name, |(_, n, _)| *n);
        r.push(h.all.start, Instruction::Language(Language { code, name: canonical }));
        r.take(h.all);
    }
    blank_all(r, regex!(r"(?i),?\s*(?:and\s+)?no\s+other\s+language\s+is\s+allowed\.?"));
}

/// "Wrap your entire response with double quotation marks."
fn quotation(r: &mut Reader) {
    let re = regex!(
        r"(?i)\b(?:wrap|wrapped|enclose|enclosed|surround|surrounded|put|place|placed|entire|whole)\b[^.\n]{0,60}?\bdouble\s+quot(?:ations?\s+marks?|es)\b"
    );
    for h in r.hits(re) {
        r.push(h.all.start, Instruction::Quoted);
        r.take(h.all);
    }
}

/// "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of
/// joy>>."
fn title(r: &mut Reader) {
    let re = regex!(r"(?i)double\s+angul?ar\s+brackets|double\s+angle\s+brackets|\btitle\b[^.\n]{0,80}?<<[^<>\n]+>>");
    for h in r.hits(re) {
        r.push(h.all.start, Instruction::Title);
        let sentence = r.sentence(h.all.clone());
        r.take(h.all);
        for t in hits(regex!(r"<<[^<>\n]*>>"), &r.text[sentence.clone()]) {
            r.take(sentence.start + t.all.start..sentence.start + t.all.end);
        }
    }
}

/// "Entire output should be wrapped in JSON format. You can use markdown ticks such as ```."
fn json(r: &mut Reader) {
    let re = regex!(r"(?i)\bjson\s+format\b|\bvalid\s+json\b|\bas\s+json\b|\bin\s+json\b");
    for h in r.hits(re) {
        r.push(h.all.start, Instruction::Json);
        r.take(h.all);
    }
    blank_all(r, regex!(r"(?i)you\s+can\s+use\s+markdown\s+ticks\s+such\s+as\s+```\.?"));
}

/// "Highlight at least {N} sections in your answer with markdown, i.e. *highlighted section*."
fn highlights(r: &mut Reader) {
    let re = regex!(format!(
        r"(?i)\bhighlight(?:s|ed|ing)?\b[^.\n]{{0,40}}?\b(?:(?:at\s+least|a\s+minimum\s+of|minimum\s+of)\s+)?{NUM}\s+(?:\w+\s+){{0,2}}?(?:sections?|parts?|phrases?|passages?|areas?|points?)\b"
    ));
    for h in r.hits(re) {
        if let Some(n) = h.get(1).and_then(number) {
            r.push(h.all.start, Instruction::Highlights(n));
            r.take(h.all);
        }
    }
    blank_all(
        r,
        regex!(
            r"(?i)(?:(?:in\s+your\s+answer\s+)?with\s+markdown,?\s*)?(?:i\.\s?e\.?|e\.\s?g\.?|such\s+as|for\s+example|like)?,?:?\s*\*highlighted\s+section\*\.?"
        ),
    );
}

/// "Your response must have {N} sections. Mark the beginning of each section with {splitter} X,
/// such as: ..."; "N sections" alone counts lines starting "Section k".
fn sections(r: &mut Reader) {
    let splitter = r
        .hits(regex!(r#"\b(?i:with|as|by|using|like)\s+["'“]?([A-Za-z]+)\s+X\b["'”]?"#))
        .into_iter()
        .find_map(|h| Some((h.all.clone(), h.get(1)?.to_string())));
    let (name, exact_case) = match &splitter {
        Some((_, s)) => (s.clone(), true),
        None => ("Section".to_string(), false),
    };
    let named = splitter.as_ref().and_then(|(_, name)| {
        Regex::new(&format!(r"(?i)\b(?:exactly\s+)?{NUM}[\s-]+(?:\w+[\s-]+)??{}s?\b", regex::escape(name))).ok()
    });
    let count = match &named {
        Some(named) => Some(named),
        None => regex!(format!(r"(?i)\b(?:exactly\s+)?{NUM}[\s-]+(?:\w+[\s-]+)??sections?\b")),
    };
    let Some(count) = r.hits(count).into_iter().next() else { return };
    let Some(n) = count.get(1).and_then(number) else { return };
    let sentence = r.sentence(count.all.clone());
    let instruction = if splitter.is_some() {
        Instruction::Sections { splitter: name.clone(), count: n, exact_case }
    } else if regex!(r"(?i)\bhighlight").is_some_and(|x| x.is_match(&r.text[sentence])) {
        // "at least 15 sections should be highlighted with markdown"
        Instruction::Highlights(n)
    } else if regex!(r"\*\*\*|(?i:markdown\s+divider)").is_some_and(|x| x.is_match(&r.text)) {
        // "exactly 4 sections. Separate the sections by the markdown divider: ***"
        Instruction::Paragraphs { count: n, divider: Divider::Markdown }
    } else {
        Instruction::Sections { splitter: name.clone(), count: n, exact_case }
    };
    r.push(count.all.start, instruction);
    r.take(count.all);
    if let Some((range, _)) = splitter {
        r.take(range);
        blank_all(r, regex!(r"(?i)\[content of (?:section|part|paragraph) \d+\]"));
        if let Ok(re) = Regex::new(&format!(r"(?m)^\s*{}\s+\d+\s*$", regex::escape(&name))) {
            blank_all(r, Some(&re));
        }
    }
}

/// "There should be {N} paragraphs. Paragraphs are separated with the markdown divider: ***"
fn paragraphs(r: &mut Reader) {
    let Some(h) = r.hits(regex!(format!(r"(?i)\b(?:exactly\s+)?{NUM}[\s-]+paragraphs?\b"))).into_iter().next() else {
        return;
    };
    let Some(count) = h.get(1).and_then(number) else { return };
    let divider = if regex!(r"(?i)\*\*\*|markdown\s+divider").is_some_and(|x| x.is_match(&r.text)) {
        Divider::Markdown
    } else if regex!(
        r"(?i)two\s+new\s*lines|\\n\\n|double\s+line\s+breaks?|two\s+line\s+breaks|blank\s+lines?|empty\s+lines?"
    )
    .is_some_and(|x| x.is_match(&r.text))
    {
        Divider::BlankLine
    } else {
        Divider::Either
    };
    r.push(h.all.start, Instruction::Paragraphs { count, divider });
    r.take(h.all);
    blank_all(
        r,
        regex!(
            r"(?i)(?:paragraphs\s+(?:are|should\s+be)\s+)?separated\s+(?:with|by)\s+(?:the\s+)?markdown\s+divider:?\s*(?:\*\s?\*\s?\*)?"
        ),
    );
}

/// Bullet points, placeholders, words and sentences: "{relation} {N} words", "exactly {N}
/// bullet points", "at least {N} placeholders".
fn counted(r: &mut Reader) {
    let bullets = regex!(format!(r"(?i)\b(?:exactly\s+)?{NUM}\s+(?:[\w-]+\s+){{0,2}}?bullet(?:\s+points?|s)?\b"));
    for h in r.hits(bullets) {
        if let Some(n) = h.get(1).and_then(number) {
            r.push(h.all.start, Instruction::Bullets(n));
            r.take(h.all);
        }
    }
    blank_all(r, regex!(r"(?i)use\s+the\s+markdown\s+bullet\s+points\s+such\s+as:?(?:\s*\n\s*\*[^\n]*)*"));
    let placeholders =
        regex!(format!(r"(?i)\b(?:(?:at\s+least|a\s+minimum\s+of|minimum\s+of)\s+)?{NUM}\s+placeholders?\b"));
    for h in r.hits(placeholders) {
        if let Some(n) = h.get(1).and_then(number) {
            r.push(h.all.start, Instruction::Placeholders(n));
            r.take(h.all);
        }
    }
    blank_all(
        r,
        regex!(
            r"(?i)represented\s+by\s+square\s+brackets,?\s*(?:such\s+as|e\.g\.|i\.e\.|like)?\s*(?:\[[^\]\n]*\],?\s*)*\.?"
        ),
    );
    // Groups: 1 relation, 2 count, 3 "+", 4 "or more" before the unit, 5 after it.
    let words = regex!(format!(
        r"(?i)\b(?:{REL}\s+)?{NUM}(\+)?(?:\s+or\s+(more|less|fewer))?(?:\s+|-)words?\b(?:\s+or\s+(more|less|fewer))?"
    ));
    let sentences = regex!(format!(
        r"(?i)\b(?:{REL}\s+)?{NUM}(\+)?(?:\s+or\s+(more|less|fewer))?(?:\s+|-)sentences?\b(?:\s+or\s+(more|less|fewer))?"
    ));
    let number_of = regex!(format!(
        r"(?i)\bnumber\s+of\s+(words|sentences)\b[^.\n]{{0,40}}?\b(?:should|must|has\s+to|needs\s+to)\s+be\s+(?:{REL}\s+)?{NUM}(\+)?(?:\s+or\s+(more|less|fewer))?"
    ));
    for h in r.hits(number_of) {
        let Some(n) = h.get(3).and_then(number) else { continue };
        let cmp = relation(h.get(2), h.get(4).is_some(), h.get(5));
        let words = h.get(1).is_some_and(|u| u.to_lowercase().starts_with("word"));
        r.push(h.all.start, if words { Instruction::Words(cmp, n) } else { Instruction::Sentences(cmp, n) });
        r.take(h.all);
    }
    for (re, words) in [(words, true), (sentences, false)] {
        for h in r.hits(re) {
            let Some(n) = h.get(2).and_then(number) else { continue };
            let sentence = r.sentence(h.all.clone());
            if regex!(r"(?i)\b(?:each|every|per)\b").is_some_and(|x| x.is_match(&r.text[sentence])) {
                continue; // "each line should contain exactly one sentence": not the reply's count
            }
            let cmp = relation(h.get(1), h.get(3).is_some(), h.get(4).or(h.get(5)));
            r.push(h.all.start, if words { Instruction::Words(cmp, n) } else { Instruction::Sentences(cmp, n) });
            r.take(h.all);
        }
    }
}

/// "In your entire response, refrain from the use of any commas."; "no commas", "do not use any
/// commas".
fn no_commas(r: &mut Reader) {
    let re = regex!(r"(?i)(?:\b(?:no|not|without|never|avoid|refrain|zero|nor)\b|n['’]t\b)[^.\n]{0,40}?\bcommas?\b");
    if let Some(h) = r.hits(re).into_iter().next() {
        r.push(h.all.start, Instruction::NoCommas);
        r.take(h.all);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every instruction of IFEval's registry: its description text as `build_description`
    /// writes it (placeholders filled), a reply that follows it and one that does not.
    const IFEVAL: [(&str, &str, &str, &str); 34] = [
        (
            "keywords:existence",
            "Include keywords ['bean', 'cup'] in the response.",
            "A cup of coffee starts with a roasted Bean.",
            "Coffee is a drink.",
        ),
        (
            "keywords:frequency",
            "In your response, the word batted should appear at least 2 times.",
            "He batted once and then BATTED again.",
            "He batted once.",
        ),
        (
            "keywords:frequency",
            "In your response, the word tea should appear less than 3 times.",
            "Tea is nice, tea is warm.",
            "Tea, tea and more tea.",
        ),
        (
            "keywords:forbidden_words",
            "Do not include keywords ['cold', 'snow'] in the response.",
            "Winter days are short and the snowfall-free nights are coldish.",
            "Winter brings Snow.",
        ),
        (
            "keywords:letter_frequency",
            "In your response, the letter q should appear at least 3 times.",
            "Quiet queens quote quickly.",
            "Hello there.",
        ),
        (
            "keywords:letter_frequency",
            "In your response, the letter z should appear less than 2 times.",
            "A zebra.",
            "Pizza and jazz.",
        ),
        (
            "language:response_language",
            "Your ENTIRE response should be in Hindi language, no other language is allowed.",
            "भारत एक विशाल देश है और यहाँ कई भाषाएँ बोली जाती हैं। लोग त्योहारों को बड़े उत्साह से मनाते हैं।",
            "India is a vast country where many languages are spoken and festivals are celebrated.",
        ),
        (
            "language:response_language",
            "Your ENTIRE response should be in Swahili language, no other language is allowed.",
            "Habari za asubuhi. Leo ni siku nzuri sana na watu wengi wako nje kwa ajili ya sherehe ya kijiji.",
            "Good morning. Today is a very nice day and many people are outside for the village party.",
        ),
        (
            "length_constraints:number_sentences",
            "Your response should contain less than 3 sentences.",
            "Tea is good. I like it, e.g. green tea from Mr. Li.",
            "One. Two. Three. Four.",
        ),
        (
            "length_constraints:number_sentences",
            "Your response should contain at least 3 sentences.",
            "Tea is good. Coffee is too! Which do you prefer?",
            "Just one sentence here.",
        ),
        (
            "length_constraints:number_paragraphs",
            "There should be 3 paragraphs. Paragraphs are separated with the markdown divider: ***",
            "First part.\n***\nSecond part.\n***\nThird part.",
            "First part.\n\nSecond part.\n\nThird part.",
        ),
        (
            "length_constraints:number_words",
            "Answer with less than 10 words.",
            "A short answer, right here.",
            "This answer is far too long because it keeps going on and on.",
        ),
        (
            "length_constraints:number_words",
            "Answer with at least 8 words.",
            "This answer is long enough because it keeps going.",
            "Too short.",
        ),
        (
            "length_constraints:nth_paragraph_first_word",
            "There should be 2 paragraphs. Paragraphs and only paragraphs are separated with each other by two new lines as if it was '\\n\\n' in python. Paragraph 2 must start with word president.",
            "The nation voted on Sunday.\n\n\"President, sir,\" they said.",
            "The nation voted on Sunday.\n\nThey said hello.",
        ),
        (
            "detectable_content:number_placeholders",
            "The response must contain at least 2 placeholders represented by square brackets, such as [address].",
            "Dear [name], your parcel goes to [address].",
            "Dear John, your parcel is on its way.",
        ),
        (
            "detectable_content:postscript",
            "At the end of your response, please explicitly add a postscript starting with P.S.",
            "See you soon.\nP.S. Bring snacks.",
            "See you soon.",
        ),
        (
            "detectable_content:postscript",
            "At the end of your response, please explicitly add a postscript starting with P.P.S",
            "See you soon.\nP.P.S Bring snacks.",
            "See you soon.\nP.S. Bring snacks.",
        ),
        (
            "detectable_format:number_bullet_lists",
            "Your answer must contain exactly 2 bullet points. Use the markdown bullet points such as:\n* This is point 1. \n* This is point 2",
            "Fruit:\n* Apples\n- Pears",
            "* Apples\n* Pears\n* Plums",
        ),
        (
            "detectable_format:constrained_response",
            "Answer with one of the following options: ('My answer is yes.', 'My answer is no.', 'My answer is maybe.')",
            "My answer is no.",
            "Probably not.",
        ),
        (
            "detectable_format:number_highlighted_sections",
            "Highlight at least 2 sections in your answer with markdown, i.e. *highlighted section*.",
            "*First part* and **second part**.",
            "No highlights here, just * stars * spread out.",
        ),
        (
            "detectable_format:multiple_sections",
            "Your response must have 2 sections. Mark the beginning of each section with Section X, such as:\nSection 1\n[content of section 1]\nSection 2\n[content of section 2]",
            "Section 1\nIntro.\nSection 2\nBody.",
            "SECTION 1\nIntro and body.",
        ),
        (
            "detectable_format:multiple_sections",
            "Your response must have 3 sections. Mark the beginning of each section with SECTION X, such as:\nSECTION 1\n[content of section 1]\nSECTION 2\n[content of section 2]",
            "SECTION 1\nA.\nSECTION 2\nB.\nSECTION 3\nC.",
            "Section 1\nA.\nSection 2\nB.\nSection 3\nC.",
        ),
        (
            "detectable_format:json_format",
            "Entire output should be wrapped in JSON format. You can use markdown ticks such as ```.",
            "```JSON\n{\"fruit\": \"apple\"}\n```",
            "My favourite fruit is an apple.",
        ),
        (
            "detectable_format:title",
            "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>.",
            "<<Spring>>\nBlossoms everywhere.",
            "Spring\nBlossoms everywhere, << >>.",
        ),
        (
            "combination:two_responses",
            "Give two different responses. Responses and only responses should be separated by 6 asterisk symbols: ******.",
            "Yes, it is.\n******\nNo, it is not.",
            "Yes, it is.\n******\nYes, it is.",
        ),
        (
            "combination:repeat_prompt",
            "Write a haiku about tea. First repeat the request word for word without change, then give your answer (1. do not say any words or characters before repeating the request; 2. the request you need to repeat does not include this sentence)",
            "Write a haiku about tea.\nLeaves unfurl in heat",
            "Sure! Write a haiku about tea.\nLeaves unfurl in heat",
        ),
        (
            "startend:end_checker",
            "Finish your response with this exact phrase Any other questions?. No other words should follow this phrase.",
            "Tea is great. Any other questions?",
            "Any other questions? Bye.",
        ),
        (
            "startend:end_checker",
            "Finish your response with this exact phrase Is there anything else I can help with?. No other words should follow this phrase.",
            "\"Tea is great. Is there anything else I can help with?\"",
            "Is there anything else I can help with? Bye.",
        ),
        (
            "change_case:capital_word_frequency",
            "In your response, words with all capital letters should appear at least 2 times.",
            "This is VERY GOOD tea.",
            "This is Very good tea, I think.",
        ),
        (
            "change_case:capital_word_frequency",
            "In your response, words with all capital letters should appear less than 2 times.",
            "This is VERY good tea.",
            "THIS IS very good tea.",
        ),
        (
            "change_case:english_capital",
            "Your entire response should be in English, and in all capital letters.",
            "THE WEATHER IS LOVELY TODAY AND THE SUN IS SHINING OVER THE GREEN HILLS OF THE VALLEY.",
            "The weather is lovely today and the sun is shining over the green hills of the valley.",
        ),
        (
            "change_case:english_lowercase",
            "Your entire response should be in English, and in all lowercase letters. No capital letters are allowed.",
            "the weather is lovely today and the sun is shining over the green hills of the valley.",
            "The weather is lovely today and the sun is shining over the green hills of the valley.",
        ),
        (
            "punctuation:no_comma",
            "In your entire response, refrain from the use of any commas.",
            "Tea is good and coffee is good too.",
            "Tea, coffee and juice.",
        ),
        (
            "startend:quotation",
            "Wrap your entire response with double quotation marks.",
            "  \"Hello there.\"\n",
            "Hello there.",
        ),
    ];

    #[test]
    fn every_ifeval_description_is_its_one_check() {
        for (id, description, good, bad) in IFEVAL {
            // Alone and after a task: the task adds nothing, the instruction exactly its check.
            for prompt in [description.to_string(), format!("Write a short text about tea. {description}")] {
                let found = parse(&prompt);
                assert_eq!(found.len(), 1, "{id}: {prompt:?} read as {found:?}");
                assert_eq!(found[0].ifeval_id(), Some(id), "{prompt:?} read as {found:?}");
                if id != "combination:repeat_prompt" {
                    assert!(found[0].holds(good), "{id}: {good:?} should follow {found:?}");
                    assert!(!found[0].holds(bad), "{id}: {bad:?} should not follow {found:?}");
                }
            }
        }
        let read: std::collections::BTreeSet<&str> = IFEVAL.iter().map(|(id, ..)| *id).collect();
        let registry: std::collections::BTreeSet<&str> = IFEVAL_IDS.into_iter().collect();
        assert_eq!(read, registry, "every id of the registry has a description in the table");
        // Repeat-prompt's request is the rest of the prompt.
        let found = parse(IFEVAL.iter().find(|(id, ..)| *id == "combination:repeat_prompt").map_or("", |r| r.1));
        assert_eq!(found, vec![Instruction::RepeatPrompt("Write a haiku about tea.".into())]);
        assert!(found[0].holds("write a haiku about tea. Leaves unfurl"));
        assert!(!found[0].holds("Sure! Write a haiku about tea."));
    }

    /// IFEval's `INSTRUCTION_CONFLICTS` (instructions_registry.py), made symmetric as its
    /// `conflict_make` does: the pairs it never puts in one prompt.
    fn ifeval_conflict(a: &str, b: &str) -> bool {
        let all_but = |x: &str, keep: &[&str], other: &str| x == other || !keep.contains(&other);
        let one_way = |a: &str, b: &str| match a {
            _ if a == b => true,
            "language:response_language" => [
                "detectable_format:multiple_sections",
                "keywords:existence",
                "keywords:frequency",
                "keywords:forbidden_words",
                "startend:end_checker",
                "change_case:english_capital",
                "change_case:english_lowercase",
            ]
            .contains(&b),
            "length_constraints:number_paragraphs" => {
                ["length_constraints:nth_paragraph_first_word", "length_constraints:number_sentences"].contains(&b)
            }
            "detectable_format:constrained_response" => true,
            "detectable_format:multiple_sections" => {
                ["language:response_language", "detectable_format:number_highlighted_sections"].contains(&b)
            }
            "detectable_format:json_format" => all_but(a, &["keywords:forbidden_words", "keywords:existence"], b),
            "combination:two_responses" => all_but(
                a,
                &[
                    "keywords:forbidden_words",
                    "keywords:existence",
                    "language:response_language",
                    "detectable_format:title",
                    "punctuation:no_comma",
                ],
                b,
            ),
            "combination:repeat_prompt" => {
                all_but(a, &["keywords:existence", "detectable_format:title", "punctuation:no_comma"], b)
            }
            "change_case:capital_word_frequency" => {
                ["change_case:english_lowercase", "change_case:english_capital"].contains(&b)
            }
            "change_case:english_lowercase" => b == "change_case:english_capital",
            "startend:quotation" => b == "detectable_format:title",
            _ => false,
        };
        one_way(a, b) || one_way(b, a)
    }

    #[test]
    fn two_ifeval_instructions_in_one_prompt_are_their_two_checks() {
        let mut pairs = 0;
        for (a, da, ..) in IFEVAL {
            for (b, db, ..) in IFEVAL {
                if ifeval_conflict(a, b) {
                    continue;
                }
                let prompt = format!("Write about tea. {da}\n{db}");
                let mut ids: Vec<_> = parse(&prompt).iter().filter_map(Instruction::ifeval_id).collect();
                ids.sort_unstable();
                let mut expected = vec![a, b];
                expected.sort_unstable();
                assert_eq!(ids, expected, "{prompt:?} read as {:?}", parse(&prompt));
                pairs += 1;
            }
        }
        assert!(pairs > 500, "{pairs}");
    }

    proptest::proptest! {
        #[test]
        fn reading_and_checking_never_panic(prompt in "\\PC{0,120}", reply in "\\PC{0,120}", at in 0usize..34) {
            let (_, description, ..) = IFEVAL[at];
            for p in [prompt.clone(), format!("{prompt} {description} {prompt}")] {
                for instruction in parse(&p) {
                    let _ = instruction.holds(&reply);
                }
            }
        }
    }

    #[test]
    fn ifeval_english_lowercase_sentence_is_one_lowercase_check() {
        let prompt =
            "Your entire response should be in English, and in all lowercase letters. No capital letters are allowed.";
        assert_eq!(parse(prompt), vec![Instruction::Lowercase { english: true }]);
        let check = &parse(prompt)[0];
        assert!(check.holds("tea is a drink brewed from the leaves of the tea plant, loved all over the world."));
        assert!(!check.holds("Tea is a drink brewed from the leaves of the tea plant, loved all over the world."));
        assert!(!check.holds("der tee ist ein getränk, das aus den blättern der teepflanze gebrüht wird."), "German");
    }

    #[test]
    fn ifeval_relations_read_both_ways() {
        let read = |p: &str| parse(p);
        assert_eq!(read("Answer with less than 100 words."), vec![Instruction::Words(Cmp::Below, 100)]);
        assert_eq!(read("Answer with at least 300 words."), vec![Instruction::Words(Cmp::AtLeast, 300)]);
        assert_eq!(
            read("Your response should contain less than 5 sentences."),
            vec![Instruction::Sentences(Cmp::Below, 5)]
        );
        assert_eq!(
            read("Your response should contain at least 20 sentences."),
            vec![Instruction::Sentences(Cmp::AtLeast, 20)]
        );
        assert_eq!(
            read("In your response, words with all capital letters should appear less than 4 times."),
            vec![Instruction::CapitalWords(Cmp::Below, 4)]
        );
        assert_eq!(
            read("In your response, the letter l should appear at least 5 times."),
            vec![Instruction::LetterFrequency { letter: 'l', cmp: Cmp::AtLeast, count: 5 }]
        );
        // IFEval's word count is `\w+` tokens: "don't" is two, "e-mail" two.
        assert_eq!(word_count("I don't use e-mail."), 6);
    }

    #[test]
    fn ifeval_languages_are_detected() {
        let samples = [
            ("English", "The quick brown fox jumps over the lazy dog while the farmer watches from the porch."),
            (
                "French",
                "Paris est la capitale de la France et une ville très visitée par les touristes du monde entier.",
            ),
            ("German", "Berlin ist die Hauptstadt von Deutschland und eine Stadt mit vielen Museen und Parks."),
            ("Spanish", "Madrid es la capital de España y una ciudad llena de museos, parques y restaurantes."),
            (
                "Portuguese",
                "Lisboa é a capital de Portugal e uma cidade muito bonita, com muitas colinas e elétricos amarelos.",
            ),
            ("Italian", "Roma è la capitale d'Italia ed è famosa per i suoi monumenti antichi e le sue piazze."),
            (
                "Russian",
                "Москва является столицей России и одним из крупнейших городов мира. Здесь много музеев и парков.",
            ),
            (
                "Ukrainian",
                "Київ є столицею України і одним із найстаріших міст Східної Європи. Тут багато церков і парків.",
            ),
            ("Japanese", "東京は日本の首都です。たくさんの人が電車で通勤しています。"),
            ("Korean", "서울은 대한민국의 수도입니다. 많은 사람들이 지하철을 타고 출근합니다."),
            ("Arabic", "القاهرة هي عاصمة مصر وأكبر مدنها. يعيش فيها ملايين الناس من مختلف الثقافات."),
            ("Hindi", "भारत एक विशाल देश है और यहाँ कई भाषाएँ बोली जाती हैं। लोग त्योहारों को बड़े उत्साह से मनाते हैं।"),
            ("Finnish", "Helsinki on Suomen pääkaupunki, ja siellä on paljon kauniita puistoja ja museoita."),
            ("Polish", "Warszawa jest stolicą Polski i największym miastem w kraju. Mieszka tu wielu ludzi."),
            ("Vietnamese", "Hà Nội là thủ đô của Việt Nam và là một thành phố có nhiều hồ nước đẹp."),
            ("Hebrew", "ירושלים היא עיר עתיקה וחשובה מאוד להרבה אנשים בעולם."),
            ("Thai", "กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย มีผู้คนอาศัยอยู่มากมาย"),
            (
                "Swahili",
                "Habari za asubuhi. Leo ni siku nzuri sana na watu wengi wako nje kwa ajili ya sherehe ya kijiji.",
            ),
        ];
        for (name, text) in samples {
            let found =
                parse(&format!("Your ENTIRE response should be in {name} language, no other language is allowed."));
            let [Instruction::Language(language)] = found.as_slice() else { panic!("{name}: {found:?}") };
            assert_eq!(language.name, name);
            assert!(found[0].holds(text), "{name}: {text}");
            if name != "English" {
                assert!(!found[0].holds(samples[0].1), "{name}: English text passed");
            }
        }
        // No language to detect, or too little text to tell: followed, as in IFEval.
        assert!(in_language("12345 !!!", "fr"));
        assert!(in_language("hello neighbour, our grey cat is missing.", "en"));
    }

    #[test]
    fn phrasings_people_write_yield_no_contradicting_checks() {
        use Instruction::*;
        let cases: Vec<(&str, Vec<Instruction>)> = vec![
            (
                "Write a 2 paragraph critique of the following sentence in all capital letters, no lowercase letters allowed: \"If the law is bad, you should not follow it\". Label each paragraph with PARAGRAPH X.",
                vec![Sections { splitter: "PARAGRAPH".into(), count: 2, exact_case: true }, Uppercase { english: false }],
            ),
            (
                "Write me a resume for Matthias Algiers. Use words with all capital letters to highlight key abilities, but make sure that words with all capital letters appear less than 10 times. Wrap the entire response with double quotation marks.",
                vec![CapitalWords(Cmp::AtLeast, 1), CapitalWords(Cmp::Below, 10), Quoted],
            ),
            ("Write a letter to a friend in all lowercase letters ask them to go and vote.", vec![Lowercase { english: false }]),
            (
                "Write a detailed review of the movie \"The Social Network\". Your entire response should be in English and all lower case (no capital letters whatsoever).",
                vec![Lowercase { english: true }],
            ),
            (
                "make a tweet for playboy's twitter account without using capital letters. Include at least 4 hashtags, starting with '#'",
                vec![Lowercase { english: false }],
            ),
            (
                "Write a story of exactly 2 paragraphs about a man who wakes up one day and realizes that he's inside a video game. Separate the paragraphs with the markdown divider: ***",
                vec![Paragraphs { count: 2, divider: Divider::Markdown }],
            ),
            (
                "What is a name that people call God? Please give exactly two different responses. Separate the responses with 6 asterisk symbols: ******.",
                vec![TwoResponses],
            ),
            (
                "Are hamburgers sandwiches? Please respond using only the Kannada language, no other language is allowed.",
                vec![Language(super::Language { code: "kn", name: "Kannada" })],
            ),
            (
                "Write a poem about how I am missing my classes. The poem must have 4 sections marked with SECTION X. Finish the poem with this exact phrase: \"Can I get my money back for the classes I missed?\"",
                vec![
                    Sections { splitter: "SECTION".into(), count: 4, exact_case: true },
                    EndsWith("Can I get my money back for the classes I missed?".into()),
                ],
            ),
            (
                "Is the sentiment positive or negative? The very last sentence of your response should be \"Is there anything else I can help with?\".",
                vec![EndsWith("Is there anything else I can help with?".into())],
            ),
            (
                "Write a logic quiz for teenagers about a chesterfield. In your entire response, the letter t should appear at most once.",
                vec![LetterFrequency { letter: 't', cmp: Cmp::AtMost, count: 1 }],
            ),
            (
                "Write the lyrics to a hit song by the rock band 'The Gifted and The Not Gifted'. To make it rocky, the response should be in all capital letters. The word \"rock\" should not appear in your response.",
                vec![Uppercase { english: false }, ForbiddenWords(vec!["rock".into()])],
            ),
            (
                "Rewrite the following statement to sound formal: \"Thanks ya all.\"\nDo not include the following keywords: field, thanks, issue, collaborator.",
                vec![ForbiddenWords(vec!["field".into(), "thanks".into(), "issue".into(), "collaborator".into()])],
            ),
            (
                "Write a social media post about the hajj pilgrimage. Use all lowercase letters and include the word story at least twice.",
                vec![Lowercase { english: false }, KeywordFrequency { keyword: "story".into(), cmp: Cmp::AtLeast, count: 2 }],
            ),
            (
                "Write a 300+ word summary of the wikipedia page \"https://en.wikipedia.org/wiki/Raymond_III,_Count_of_Tripoli\". Do not use any commas and highlight at least 3 sections that has titles in markdown format, for example *highlighted section part 1*, *highlighted section part 2*, *highlighted section part 3*.",
                vec![Words(Cmp::AtLeast, 300), NoCommas, Highlights(3)],
            ),
            (
                "Write an email to my boss telling him that I am quitting. The email must contain a title wrapped in double angular brackets, i.e. <<title>>.\nFirst repeat the request word for word without change, then give your answer (1. do not say any words or characters before repeating the request; 2. the request you need to repeat does not include this sentence)",
                vec![
                    Title,
                    RepeatPrompt("Write an email to my boss telling him that I am quitting. The email must contain a title wrapped in double angular brackets, i.e. <<title>>.".into()),
                ],
            ),
            (
                "Write a long email template with at least 500 words. The email must include the keywords \"correlated\" and \"experiencing\" and should not use any commas.",
                vec![Words(Cmp::AtLeast, 500), Keywords(vec!["correlated".into(), "experiencing".into()]), NoCommas],
            ),
            (
                "Write a short blog post about a trip to Japan using less than 300 words.",
                vec![Words(Cmp::Below, 300)],
            ),
            (
                "How tall was it? Finish your response with the exact phrase of \"Is there anything else I can help with?\" with no other words after the word \"with\". Mention the word \"skyscraper\" for at least 8 times.",
                vec![
                    EndsWith("Is there anything else I can help with?".into()),
                    KeywordFrequency { keyword: "skyscraper".into(), cmp: Cmp::AtLeast, count: 8 },
                ],
            ),
            (
                "Write a poem about Tokyo. Your answer must contain exactly one of the following phrases: “My answer is yes.\", \"My answer is no.\", \"My answer is maybe.\"",
                vec![OneOf(vec!["My answer is yes.".into(), "My answer is no.".into(), "My answer is maybe.".into()])],
            ),
            ("Describe Europe's capitals and the history of baseball caps.", vec![]),
            ("Title the poem in all capital letters and write the rest in lowercase.", vec![]),
            ("Do not write in all caps.", vec![]),
            ("Explain in French why it is important to eat healthy foods.", vec![]),
            ("Shift x << 2 in C and explain.", vec![]),
        ];
        for (prompt, expected) in cases {
            assert_eq!(parse(prompt), expected, "{prompt}");
        }
    }

    #[test]
    fn ifeval_checking_rules() {
        // Paragraphs on `***`: an empty paragraph between two dividers fails; leading or
        // trailing dividers do not count.
        let three = Instruction::Paragraphs { count: 2, divider: Divider::Markdown };
        assert!(three.holds("***\nOne.\n***\nTwo.\n***"));
        assert!(!three.holds("One.\n***\n***\nTwo."));
        // Sections: at least N (IFEval counts splits), the splitter's case as named.
        let sections = Instruction::Sections { splitter: "SECTION".into(), count: 2, exact_case: true };
        assert!(sections.holds("SECTION 1 a SECTION 2 b SECTION 3 c"));
        // Bullets: `**bold**` lines are not bullets, `-` lines are.
        assert_eq!(bullet_count("* one\n**bold**\n  - two\n*\n"), 2);
        // Keywords: a case-insensitive substring, forbidden words: whole words.
        assert!(Instruction::Keywords(vec!["cup".into()]).holds("Cupboard"));
        assert!(Instruction::ForbiddenWords(vec!["cup".into()]).holds("Cupboard"));
        assert!(!Instruction::ForbiddenWords(vec!["cup".into()]).holds("A CUP."));
        // Sentences: IFEval's own splitter keeps "Mr." and decimals inside a sentence.
        assert_eq!(sentence_count("Mr. Smith paid 3.5 dollars. He left!"), 2);
        // Placeholders `[...]` on one line, empty ones too.
        assert!(Instruction::Placeholders(2).holds("[] and [x]"));
    }
}
