//! The recovery code: the owner secret written as 24 BIP39 English words, for a person
//! to keep on paper and type back on another machine (`poolfs key export/import`,
//! `poolfs mount --recover`).

use std::io::{self, BufRead};
use std::path::Path;

use bip39::{Language, Mnemonic};

use super::{OwnerKey, KEY_LEN};

/// Words in a recovery code: 256 bits of secret and 8 of checksum, 11 bits a word.
pub const RECOVERY_WORDS: usize = 24;

/// Why a recovery code was refused. Each message says what to look at on the paper.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecoveryCodeError {
    /// Too few or too many words (a line skipped or written twice).
    #[error("expected {RECOVERY_WORDS} words, got {got}")]
    WordCount {
        /// How many words the text held.
        got: usize,
    },
    /// A word that is not in the BIP39 English list.
    #[error(
        "word {position} ({word:?}) is not in the recovery code's word list{}",
        suggestion.map(|s| format!(" (did you mean {s:?}?)")).unwrap_or_default()
    )]
    UnknownWord {
        /// Its place in the code, counted from 1.
        position: usize,
        /// The word as given (lower-cased).
        word: String,
        /// The one listed word that starts with the same four letters, if any (the
        /// list's words differ within their first four letters).
        suggestion: Option<&'static str>,
    },
    /// Every word is listed but the checksum does not match.
    #[error(
        "the words do not check out: a word is mistyped or out of order (every word is \
         in the list, but they are not the code that was exported)"
    )]
    Checksum,
}

impl OwnerKey {
    /// The owner secret as its recovery code: 24 lower-case English words of the BIP39
    /// list, separated by single spaces; the last word carries an 8-bit checksum.
    pub fn recovery_code(&self) -> String {
        match Mnemonic::from_entropy_in(Language::English, &self.0) {
            Ok(m) => m.words().collect::<Vec<_>>().join(" "),
            // 32 bytes is one of the entropy lengths BIP39 defines (256 bits).
            Err(e) => unreachable!("a {KEY_LEN}-byte secret is valid BIP39 entropy: {e}"),
        }
    }

    /// The owner secret a recovery code stands for. The text may be in any case, with
    /// any whitespace (spaces, tabs, newlines) around and between the words.
    ///
    /// Errors: `RecoveryCodeError::WordCount` unless there are exactly 24 words,
    /// `UnknownWord` naming the first word not in the list, `Checksum` when the words
    /// are listed but do not make a valid code (mistyped into another listed word,
    /// or two words swapped).
    pub fn from_recovery_code(text: &str) -> Result<OwnerKey, RecoveryCodeError> {
        let words: Vec<String> = text.split_whitespace().map(str::to_lowercase).collect();
        if words.len() != RECOVERY_WORDS {
            return Err(RecoveryCodeError::WordCount { got: words.len() });
        }
        let english = Language::English;
        if let Some((i, word)) = words
            .iter()
            .enumerate()
            .find(|(_, w)| english.find_word(w).is_none())
        {
            return Err(RecoveryCodeError::UnknownWord {
                position: i + 1,
                word: word.clone(),
                suggestion: suggest(word),
            });
        }
        let mnemonic = Mnemonic::parse_in_normalized(english, &words.join(" "))
            .map_err(|_| RecoveryCodeError::Checksum)?;
        let (entropy, len) = mnemonic.to_entropy_array();
        let secret: [u8; KEY_LEN] = entropy
            .get(..len)
            .and_then(|e| e.try_into().ok())
            .ok_or(RecoveryCodeError::WordCount { got: words.len() })?;
        Ok(OwnerKey(secret))
    }
}

/// The listed word a mistyped `word` most likely was: the only one sharing its first
/// four letters (BIP39 English words are unique in those).
fn suggest(word: &str) -> Option<&'static str> {
    let prefix: String = word.chars().take(4).collect();
    if prefix.chars().count() < 4 {
        return None;
    }
    let mut matches = Language::English.words_by_prefix_iter(&prefix);
    match (matches.next(), matches.next()) {
        (Some(one), None) => Some(one),
        _ => None,
    }
}

/// Reads a recovery code typed or piped in: lines until 24 words have come, or the end
/// of input (so a person may type all the words on one line and press Enter, or one
/// word a line). Returns the text read, unchecked (see `OwnerKey::from_recovery_code`).
///
/// Errors: a failed read, or input that is not UTF-8, as `io::Error`.
pub fn read_recovery_code(mut input: impl BufRead) -> io::Result<String> {
    let mut text = String::new();
    while text.split_whitespace().count() < RECOVERY_WORDS {
        if input.read_line(&mut text)? == 0 {
            break;
        }
    }
    Ok(text)
}

/// What the first mount of a storage directory tells the user, once, on the terminal
/// when it has made a new owner key there.
pub fn new_owner_key_notice(storage: &Path) -> String {
    let dir = storage.display();
    format!(
        "A new owner key was made for {dir}. Your files can be recovered on another machine \
         only with it: run `poolfs key export --storage {dir}` and keep the 24 words on \
         paper, with the pool key."
    )
}

/// Whether a command made a new owner key in a storage directory: look before the mount
/// starts, ask once it is up. A mount that fails before it is ready removes a key it
/// made (`forget_if_new`), so the user hears only of keys that protect files.
#[derive(Debug, Clone)]
pub struct OwnerKeyWatch {
    file: std::path::PathBuf,
    existed: bool,
}

impl OwnerKeyWatch {
    /// Notes whether `storage/owner.key` exists now.
    pub fn before(storage: &Path) -> OwnerKeyWatch {
        let file = storage.join(super::OWNER_KEY_FILE);
        let existed = file.exists();
        OwnerKeyWatch { file, existed }
    }

    /// True when there was no owner key at `before` and there is one now.
    pub fn made_new(&self) -> bool {
        !self.existed && self.file.exists()
    }

    /// After a start that failed before the mount was ready (so no file was stored
    /// under it): removes the owner key the start made, so that the user is not told
    /// to keep the recovery code of a key that protects nothing, and the next start
    /// tells them of the key it makes. Returns whether one was removed.
    pub fn forget_if_new(&self) -> bool {
        self.made_new() && std::fs::remove_file(&self.file).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> OwnerKey {
        let mut bytes = [0u8; KEY_LEN];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = seed.wrapping_mul(31).wrapping_add(i as u8 * 7);
        }
        OwnerKey(bytes)
    }

    #[test]
    fn a_recovery_code_is_24_words_and_gives_the_same_key_back() {
        for seed in [0u8, 1, 77, 255] {
            let k = key(seed);
            let code = k.recovery_code();
            assert_eq!(code.split(' ').count(), RECOVERY_WORDS, "{code}");
            assert!(!code.contains("  ") && code.trim() == code, "{code:?}");
            assert!(code
                .split(' ')
                .all(|w| Language::English.find_word(w).is_some()));
            assert_eq!(OwnerKey::from_recovery_code(&code).unwrap(), k);
        }
        // Distinct secrets, distinct codes.
        assert_ne!(key(1).recovery_code(), key(2).recovery_code());
    }

    #[test]
    fn the_all_zero_secret_is_the_bip39_test_vector() {
        // BIP39's published vector for 32 zero bytes: the encoding is the standard one,
        // so any BIP39 tool can check or decode a code poolfs printed.
        let zero = OwnerKey([0; KEY_LEN]);
        let expected = format!("{}art", "abandon ".repeat(23));
        assert_eq!(zero.recovery_code(), expected);
    }

    #[test]
    fn a_recovery_code_is_read_in_any_case_and_spacing() {
        let k = key(9);
        let code = k.recovery_code();
        let words: Vec<&str> = code.split(' ').collect();
        // Upper case, four words a line, tabs and blank lines, as copied from paper.
        let messy: String = words
            .chunks(4)
            .map(|line| format!("  {}\t\n\n", line.join("   ").to_uppercase()))
            .collect();
        assert_eq!(OwnerKey::from_recovery_code(&messy).unwrap(), k);
    }

    #[test]
    fn a_missing_or_extra_word_is_refused_with_the_count() {
        let code = key(3).recovery_code();
        let short: Vec<&str> = code.split(' ').take(23).collect();
        let err = OwnerKey::from_recovery_code(&short.join(" ")).unwrap_err();
        assert_eq!(err, RecoveryCodeError::WordCount { got: 23 });
        assert_eq!(err.to_string(), "expected 24 words, got 23");
        let long = format!("{code} abandon");
        assert_eq!(
            OwnerKey::from_recovery_code(&long).unwrap_err().to_string(),
            "expected 24 words, got 25"
        );
        assert_eq!(
            OwnerKey::from_recovery_code(" \n\t ").unwrap_err(),
            RecoveryCodeError::WordCount { got: 0 }
        );
    }

    #[test]
    fn an_unknown_word_is_named_with_its_position_and_a_suggestion() {
        let code = key(4).recovery_code();
        let mut words: Vec<String> = code.split(' ').map(String::from).collect();
        let original = words[6].clone();
        // The last letter mistyped (no listed word ends in "q"): a word of five letters
        // or more keeps the four that name it, so the right one can be suggested.
        words[6] = format!("{}q", &original[..original.len() - 1]);
        let err = OwnerKey::from_recovery_code(&words.join(" ")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("word 7 ("), "{msg}");
        assert!(msg.contains(&format!("{:?}", words[6])), "{msg}");
        if original.len() >= 5 {
            assert!(msg.contains(&format!("did you mean {original:?}")), "{msg}");
        }
        // Not a word at all, and nothing to suggest.
        words[6] = original;
        words[0] = "zq".into();
        assert_eq!(
            OwnerKey::from_recovery_code(&words.join(" ")).unwrap_err(),
            RecoveryCodeError::UnknownWord {
                position: 1,
                word: "zq".into(),
                suggestion: None
            }
        );
    }

    #[test]
    fn a_single_substituted_word_is_caught_by_the_checksum() {
        let k = key(5);
        let code = k.recovery_code();
        let words: Vec<&str> = code.split(' ').collect();
        let list = Language::English.word_list();
        // The last word carries the checksum bits: any other word in any place that
        // is replaced by another listed word must be refused, never decoded to
        // another key. Every place, a spread of replacement words.
        let mut caught = 0;
        for place in 0..RECOVERY_WORDS - 1 {
            for step in [1usize, 2, 100, 1023, 2047] {
                let idx = Language::English.find_word(words[place]).unwrap() as usize;
                let other = list[(idx + step) % list.len()];
                let mut typo = words.clone();
                typo[place] = other;
                match OwnerKey::from_recovery_code(&typo.join(" ")) {
                    Err(RecoveryCodeError::Checksum) => caught += 1,
                    Ok(decoded) => assert_ne!(decoded, k, "a changed word gave the same key"),
                    Err(e) => panic!("unexpected error for word {place}: {e}"),
                }
            }
        }
        // An 8-bit checksum lets about 1 change in 256 through; nearly all are caught.
        assert!(caught >= 110, "only {caught} of 115 substitutions caught");
        // The message tells a person what to look for.
        let msg = RecoveryCodeError::Checksum.to_string();
        assert!(msg.contains("a word is mistyped or out of order"), "{msg}");
    }

    #[test]
    fn two_swapped_words_are_caught() {
        let code = key(6).recovery_code();
        let mut words: Vec<&str> = code.split(' ').collect();
        let (a, b) = (2, 9);
        assert_ne!(words[a], words[b], "pick two different words");
        words.swap(a, b);
        assert_eq!(
            OwnerKey::from_recovery_code(&words.join(" ")).unwrap_err(),
            RecoveryCodeError::Checksum
        );
    }

    #[test]
    fn reading_a_code_stops_after_24_words_or_at_the_end() {
        let code = key(8).recovery_code();
        // One line typed, then whatever follows is not consumed.
        let typed = format!("{code}\nnot read\n");
        let mut input = io::Cursor::new(typed.as_bytes());
        let got = read_recovery_code(&mut input).unwrap();
        assert_eq!(got.trim(), code);
        let mut rest = String::new();
        input.read_line(&mut rest).unwrap();
        assert_eq!(rest, "not read\n");
        // One word a line.
        let lines = code.replace(' ', "\n");
        let got = read_recovery_code(io::Cursor::new(lines.as_bytes())).unwrap();
        assert_eq!(OwnerKey::from_recovery_code(&got).unwrap(), key(8));
        // Input that ends early gives what there was (refused later by the count).
        let got = read_recovery_code(io::Cursor::new(b"abandon ability".as_slice())).unwrap();
        assert_eq!(got, "abandon ability");
    }
}
