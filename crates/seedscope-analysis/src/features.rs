//! Boolean token features for the variance-explained families (the paper's §4.3 and its
//! `vocab_df`): properties of a token's decoded string (case, digits, symbols, years, pronoun
//! classes, prefixes and suffixes, starts-with-space, word groups), unigram features (a
//! lower-cased, stripped string that several tokens share), alphabet features (the single
//! letters among them) and the identity of frequent tokens. Every feature is evaluated on the
//! current token; all but the token identities also on the previous token.

use serde::{Deserialize, Serialize};

/// What a feature describes; decides the family of a neuron it explains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    /// Form of the token: case, digits, symbols, pronoun class, affixes, spacing.
    Syntax,
    /// A word group with a meaning: months, weekdays, number words, time words, …
    Semantic,
    /// A normalised string shared by several tokens (`on`, ` on`, `On`, ` On`).
    Unigram,
    /// A single letter as a unigram (`a`, ` A`, …).
    Alphabet,
    /// One token id (for the tokens with the highest mean activation).
    Token,
}

/// One feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feature {
    /// The paper's style of name (`contains_comma`, `on_unigram`, `tok:" the"`), with a
    /// `prev:` prefix when it is evaluated on the previous token.
    pub name: String,
    /// Its kind.
    pub kind: FeatureKind,
    /// Evaluated on the previous token.
    pub previous: bool,
}

/// The features and, per token id, the features it turns on (as current and as previous token).
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureSet {
    /// All features; ids index this.
    pub features: Vec<Feature>,
    /// Per token id, the current-token features it turns on.
    pub current: Vec<Vec<u32>>,
    /// Per token id, the previous-token features it turns on.
    pub previous: Vec<Vec<u32>>,
    /// Per token-identity feature, its token id.
    pub token_of: Vec<(u32, u32)>,
}

const SYMBOLS: &[(&str, char)] = &[
    ("comma", ','),
    ("period", '.'),
    ("exclamation", '!'),
    ("question", '?'),
    ("semicolon", ';'),
    ("colon", ':'),
    ("apostrophe", '\''),
    ("quote", '"'),
    ("open_paren", '('),
    ("close_paren", ')'),
    ("open_bracket", '['),
    ("close_bracket", ']'),
    ("open_brace", '{'),
    ("close_brace", '}'),
    ("hyphen", '-'),
    ("underscore", '_'),
    ("slash", '/'),
    ("backslash", '\\'),
    ("at", '@'),
    ("hash", '#'),
    ("dollar", '$'),
    ("percent", '%'),
    ("ampersand", '&'),
    ("asterisk", '*'),
    ("plus", '+'),
    ("equals", '='),
    ("less_than", '<'),
    ("greater_than", '>'),
    ("pipe", '|'),
    ("newline", '\n'),
];

const WORD_GROUPS: &[(&str, FeatureKind, &[&str])] = &[
    (
        "is_first_person_pronoun",
        FeatureKind::Syntax,
        &[
            "i",
            "me",
            "my",
            "mine",
            "myself",
            "we",
            "us",
            "our",
            "ours",
            "ourselves",
        ],
    ),
    (
        "is_second_person_pronoun",
        FeatureKind::Syntax,
        &[
            "you",
            "your",
            "yours",
            "yourself",
            "yourselves",
            "thou",
            "thee",
            "thy",
            "thine",
            "ye",
        ],
    ),
    (
        "is_male_pronoun",
        FeatureKind::Syntax,
        &["he", "him", "his", "himself"],
    ),
    (
        "is_female_pronoun",
        FeatureKind::Syntax,
        &["she", "her", "hers", "herself"],
    ),
    (
        "is_neutral_pronoun",
        FeatureKind::Syntax,
        &["it", "its", "itself"],
    ),
    (
        "is_plural_pronoun",
        FeatureKind::Syntax,
        &["they", "them", "their", "theirs", "themselves"],
    ),
    (
        "is_demonstrative_pronoun",
        FeatureKind::Syntax,
        &["this", "that", "these", "those"],
    ),
    (
        "is_wh_word",
        FeatureKind::Syntax,
        &[
            "who", "whom", "whose", "which", "what", "where", "when", "why", "how",
        ],
    ),
    ("is_article", FeatureKind::Syntax, &["a", "an", "the"]),
    (
        "is_preposition",
        FeatureKind::Syntax,
        &[
            "of", "in", "to", "for", "with", "on", "at", "by", "from", "into", "upon", "over",
            "under", "about", "against", "between", "through",
        ],
    ),
    (
        "is_conjunction",
        FeatureKind::Syntax,
        &["and", "or", "nor", "but", "yet", "so"],
    ),
    (
        "is_contrastive_conjunction",
        FeatureKind::Syntax,
        &[
            "but",
            "however",
            "although",
            "though",
            "yet",
            "whereas",
            "nevertheless",
        ],
    ),
    (
        "is_modal_verb",
        FeatureKind::Syntax,
        &[
            "can", "could", "may", "might", "must", "shall", "should", "will", "would",
        ],
    ),
    (
        "is_negation",
        FeatureKind::Syntax,
        &["not", "no", "never", "nor", "none", "nothing", "n't"],
    ),
    (
        "is_month",
        FeatureKind::Semantic,
        &[
            "january",
            "february",
            "march",
            "april",
            "may",
            "june",
            "july",
            "august",
            "september",
            "october",
            "november",
            "december",
        ],
    ),
    (
        "is_weekday",
        FeatureKind::Semantic,
        &[
            "monday",
            "tuesday",
            "wednesday",
            "thursday",
            "friday",
            "saturday",
            "sunday",
        ],
    ),
    (
        "is_number_word",
        FeatureKind::Semantic,
        &[
            "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
            "hundred", "thousand", "first", "second", "third",
        ],
    ),
    (
        "is_time_word",
        FeatureKind::Semantic,
        &[
            "time",
            "day",
            "days",
            "night",
            "hour",
            "hours",
            "year",
            "years",
            "week",
            "month",
            "today",
            "tomorrow",
            "yesterday",
            "morning",
            "evening",
            "now",
            "ago",
        ],
    ),
    (
        "is_family_word",
        FeatureKind::Semantic,
        &[
            "father", "mother", "son", "daughter", "brother", "sister", "wife", "husband", "king",
            "queen", "lord", "lady", "sir", "madam",
        ],
    ),
    (
        "is_body_word",
        FeatureKind::Semantic,
        &[
            "heart", "eye", "eyes", "hand", "hands", "head", "blood", "face", "tongue", "soul",
        ],
    ),
    (
        "is_website_suffix",
        FeatureKind::Semantic,
        &[
            "com", "org", "net", "edu", "gov", "io", "html", "www", "http", "https",
        ],
    ),
];

const PREFIXES: &[&str] = &[
    "un", "re", "in", "im", "dis", "en", "non", "over", "mis", "sub", "pre", "inter", "fore", "de",
    "trans", "super", "semi", "anti", "mid", "under", "con", "com", "ex", "pro",
];

const SUFFIXES: &[&str] = &[
    "ing", "ed", "er", "est", "ly", "tion", "sion", "ment", "ness", "able", "ible", "ful", "less",
    "ous", "ive", "al", "ity", "s", "es", "ism", "ist", "ize", "ise", "th", "eth", "st",
];

/// The token-class (`vocab_df`-style) features of one decoded token string, as names.
pub fn vocab_features(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut on = |name: &str| out.push(name.to_string());
    let t = s.trim();
    let lower = t.to_lowercase();
    let has_alpha = t.chars().any(char::is_alphabetic);
    if has_alpha && t.chars().all(|c| !c.is_alphabetic() || c.is_uppercase()) && t.len() > 1 {
        on("all_caps");
    }
    if has_alpha && t.chars().all(|c| !c.is_alphabetic() || c.is_lowercase()) {
        on("all_lower");
    }
    if !t.is_empty() && t.chars().all(char::is_alphabetic) {
        on("all_alpha");
    }
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
        on("all_numeric");
        if t.len() == 1 {
            on("is_one_digit");
        }
        if t.len() == 2 {
            on("is_two_digit");
        }
        if let Ok(y) = t.parse::<u32>()
            && 1490 < y
            && y < 2200
        {
            on("is_year");
        }
    }
    if !t.is_empty() && t.chars().all(|c| !c.is_alphanumeric()) {
        on("all_symbolic");
    }
    if !s.is_empty() && t.is_empty() {
        on("whitespace");
    }
    if t.chars().any(|c| c.is_ascii_digit()) {
        on("contains_digit");
    }
    for (name, c) in SYMBOLS {
        if s.contains(*c) {
            on(&format!("contains_{name}"));
        }
    }
    if s.starts_with(' ') {
        on("starts_w_space");
    } else if s.chars().next().is_some_and(char::is_alphabetic) {
        on("start_w_no_space");
    }
    if t.chars().next().is_some_and(char::is_uppercase) {
        on("starts_w_cap");
    }
    for (name, _, words) in WORD_GROUPS {
        if words.contains(&lower.as_str()) {
            on(name);
        }
    }
    if has_alpha && t.chars().all(char::is_alphabetic) {
        for p in PREFIXES {
            if lower.len() > p.len() + 2 && lower.starts_with(p) {
                on(&format!("start_w_{p}"));
            }
        }
        for x in SUFFIXES {
            if lower.len() > x.len() + 2 && lower.ends_with(x) {
                on(&format!("end_w_{x}"));
            }
        }
    }
    out
}

/// The kind of a `vocab_features` name.
fn vocab_kind(name: &str) -> FeatureKind {
    WORD_GROUPS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map_or(FeatureKind::Syntax, |(_, k, _)| *k)
}

/// How the feature set is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeatureOptions {
    /// A normalised string is a unigram feature when more than this many token ids share it
    /// (the paper: 3).
    pub unigram_min_tokens: usize,
    /// … and it occurs at least this often per token of data (the paper: 3000 in 10 M).
    pub unigram_min_rate: f64,
    /// Most frequent tokens given an identity feature.
    pub max_token_features: usize,
    /// Fewest occurrences for a token-identity feature.
    pub token_min_count: u64,
}

impl Default for FeatureOptions {
    fn default() -> Self {
        Self {
            unigram_min_tokens: 3,
            unigram_min_rate: 3e-4,
            max_token_features: 1024,
            token_min_count: 5,
        }
    }
}

impl FeatureSet {
    /// Bytes it holds: the features and their names, and per token id the lists of the
    /// features it turns on.
    pub fn bytes(&self) -> u64 {
        let list = std::mem::size_of::<Vec<u32>>();
        let features: usize = self
            .features
            .iter()
            .map(|f| std::mem::size_of::<Feature>() + f.name.len())
            .sum();
        let lists: usize = (self.current.iter().chain(&self.previous))
            .map(|l| list + 4 * l.len())
            .sum();
        (features + lists + 8 * self.token_of.len()) as u64
    }

    /// Features for a vocabulary of decoded strings (`vocab[id]`), with data frequencies from
    /// `ids` (the analysed token ids, dropped positions included: they only set thresholds).
    pub fn build(vocab: &[String], ids: &[u32], options: &FeatureOptions) -> Self {
        let n_vocab = vocab.len();
        let mut freq = vec![0u64; n_vocab];
        for &i in ids {
            if let Some(f) = freq.get_mut(i as usize) {
                *f += 1;
            }
        }
        let mut features: Vec<Feature> = Vec::new();
        let mut index = std::collections::HashMap::<(String, bool), u32>::new();
        let mut current: Vec<Vec<u32>> = vec![Vec::new(); n_vocab];
        let mut previous: Vec<Vec<u32>> = vec![Vec::new(); n_vocab];
        let mut add = |id: usize, name: &str, kind: FeatureKind, prev: bool| {
            let key = (name.to_string(), prev);
            let f = *index.entry(key).or_insert_with(|| {
                features.push(Feature {
                    name: if prev {
                        format!("prev:{name}")
                    } else {
                        name.to_string()
                    },
                    kind,
                    previous: prev,
                });
                features.len() as u32 - 1
            });
            if prev {
                previous[id].push(f);
            } else {
                current[id].push(f);
            }
            f
        };
        // Token-class features, on both tokens.
        let class: Vec<Vec<String>> = vocab.iter().map(|s| vocab_features(s)).collect();
        for prev in [false, true] {
            for (id, names) in class.iter().enumerate() {
                for n in names {
                    add(id, n, vocab_kind(n), prev);
                }
            }
        }
        // Unigram and alphabet features: normalised strings shared by several tokens that
        // occur often enough.
        let mut groups: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
        for (id, s) in vocab.iter().enumerate() {
            let norm = s.trim().to_lowercase();
            if !norm.is_empty() {
                groups.entry(norm).or_default().push(id);
            }
        }
        let min_count = (options.unigram_min_rate * ids.len() as f64).max(1.0);
        for prev in [false, true] {
            for (norm, members) in &groups {
                let count: u64 = members.iter().map(|&i| freq[i]).sum();
                let letter = norm.chars().count() == 1 && norm.chars().all(char::is_alphabetic);
                if members.len() > options.unigram_min_tokens && count as f64 >= min_count
                    || letter && count > 0
                {
                    let kind = if letter {
                        FeatureKind::Alphabet
                    } else {
                        FeatureKind::Unigram
                    };
                    for &m in members {
                        add(m, &format!("{norm}_unigram"), kind, prev);
                    }
                }
            }
        }
        // Identities of the most frequent tokens (current token only).
        let mut by_freq: Vec<usize> = (0..n_vocab)
            .filter(|&i| freq[i] >= options.token_min_count)
            .collect();
        by_freq.sort_by_key(|&i| (std::cmp::Reverse(freq[i]), i));
        by_freq.truncate(options.max_token_features);
        by_freq.sort_unstable();
        let mut token_of = Vec::new();
        for &id in &by_freq {
            let name = if vocab[id].is_empty() {
                format!("tok#{id}")
            } else {
                format!("tok:{:?}", vocab[id])
            };
            let f = add(id, &name, FeatureKind::Token, false);
            token_of.push((f, id as u32));
        }
        Self {
            features,
            current,
            previous,
            token_of,
        }
    }

    /// Number of features.
    pub fn len(&self) -> usize {
        self.features.len()
    }

    /// No features at all.
    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    /// Count, for every feature, the positions it is on: `tokens[i]` with previous token
    /// `prev[i]` (`None` at a row's start).
    pub fn count(&self, pairs: impl Iterator<Item = (u32, Option<u32>)>, counts: &mut [u64]) {
        for (t, p) in pairs {
            if let Some(fs) = self.current.get(t as usize) {
                for &f in fs {
                    counts[f as usize] += 1;
                }
            }
            if let Some(fs) = p.and_then(|p| self.previous.get(p as usize)) {
                for &f in fs {
                    counts[f as usize] += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_classes() {
        let f = vocab_features(" The");
        assert!(f.contains(&"starts_w_space".into()));
        assert!(f.contains(&"starts_w_cap".into()));
        assert!(f.contains(&"is_article".into()));
        assert!(f.contains(&"all_alpha".into()));
        let f = vocab_features("1776");
        assert!(f.contains(&"is_year".into()) && f.contains(&"all_numeric".into()));
        assert!(!vocab_features("1234").contains(&"is_year".into()));
        let f = vocab_features(",");
        assert!(f.contains(&"contains_comma".into()) && f.contains(&"all_symbolic".into()));
        let f = vocab_features(" walking");
        assert!(f.contains(&"end_w_ing".into()));
        assert!(vocab_features("\n").contains(&"whitespace".into()));
        assert!(vocab_features(" March").contains(&"is_month".into()));
    }

    #[test]
    fn unigrams_alphabet_and_tokens() {
        let vocab: Vec<String> = ["on", " on", "On", " On", "a", " A", "x", "zz"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let ids: Vec<u32> = [0, 1, 2, 3, 4, 5, 1, 1, 7, 7, 7, 7, 7].to_vec();
        let fs = FeatureSet::build(
            &vocab,
            &ids,
            &FeatureOptions {
                token_min_count: 2,
                ..Default::default()
            },
        );
        let id = |n: &str| {
            fs.features
                .iter()
                .position(|f| f.name == n)
                .expect("feature exists") as u32
        };
        let on = id("on_unigram");
        assert_eq!(fs.features[on as usize].kind, FeatureKind::Unigram);
        for t in 0..4 {
            assert!(fs.current[t].contains(&on));
            assert!(fs.previous[t].contains(&id("prev:on_unigram")));
        }
        let a = id("a_unigram");
        assert_eq!(fs.features[a as usize].kind, FeatureKind::Alphabet);
        assert!(fs.current[4].contains(&a) && fs.current[5].contains(&a));
        // "x" never occurs: no alphabet feature.
        assert!(!fs.features.iter().any(|f| f.name == "x_unigram"));
        // Token identities: " on" (3 times) and "zz" (5 times), ordered by id.
        let toks: Vec<u32> = fs.token_of.iter().map(|t| t.1).collect();
        assert_eq!(toks, vec![1, 7]);
        let mut counts = vec![0u64; fs.len()];
        fs.count([(1, None), (2, Some(1))].into_iter(), &mut counts);
        assert_eq!(counts[on as usize], 2);
        assert_eq!(counts[id("prev:on_unigram") as usize], 1);
    }
}
