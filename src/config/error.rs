//! Configuration errors, phrased for an operator: each names the key (or the file and line) at fault and
//! never the value, which is often a secret pasted on the wrong line.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: config file {} does not exist", .0.display())]
    NoFile(PathBuf),
    #[error("invalid configuration: cannot read config file {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A TOML syntax error. The toml crate's own message quotes the offending line; this one says what the
    /// parser expected ("invalid basic string", "duplicate key `x`"), not what it found.
    #[error("invalid configuration: {} line {line}, column {column}{}: {expected}", .path.display(), in_key(.key))]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        key: Option<String>,
        expected: String,
    },
    /// Values that do not fit their keys (figment's findings, reworded without the values).
    #[error("invalid configuration: {}", join(.0))]
    Values(Vec<Problem>),
    /// What types alone cannot check: a cross-key requirement or a value range.
    #[error("invalid configuration: `{key}`: {problem}")]
    Key { key: String, problem: String },
}

impl ConfigError {
    pub(super) fn key(key: &str, problem: impl fmt::Display) -> Self {
        ConfigError::Key {
            key: key.to_owned(),
            problem: problem.to_string(),
        }
    }
}

/// One value that does not fit: its key (empty for the whole config), what is wrong, and where it came from.
#[derive(Debug)]
pub struct Problem {
    pub key: String,
    pub problem: String,
    pub source: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.key.is_empty() {
            write!(f, "`{}`: ", self.key)?;
        }
        f.write_str(&self.problem)?;
        if let Some(source) = &self.source {
            write!(f, " (from {source})")?;
        }
        Ok(())
    }
}

fn join(problems: &[Problem]) -> String {
    problems.iter().map(Problem::to_string).collect::<Vec<_>>().join("; ")
}

fn in_key(key: &Option<String>) -> String {
    key.as_ref().map(|k| format!(" (`{k}`)")).unwrap_or_default()
}

/// Reports a TOML syntax error by line, column and (when the line shows it) key.
pub(super) fn check_toml_syntax(path: &Path) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let Err(e) = text.parse::<toml::Table>() else {
        return Ok(());
    };
    let at = e.span().map_or(0, |span| span.start).min(text.len());
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Err(ConfigError::Syntax {
        path: path.to_owned(),
        line,
        column,
        key: key_on_line(&text, line - 1),
        expected: e.message().lines().collect::<Vec<_>>().join("; "),
    })
}

/// `section.key` of a `key = …` line (0-based index), when the line and its table header are plain.
fn key_on_line(text: &str, index: usize) -> Option<String> {
    let plain = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    let lines: Vec<&str> = text.lines().collect();
    let (key, _) = lines.get(index)?.split_once('=')?;
    let key = key.trim();
    if !plain(key) {
        return None;
    }
    let table = lines[..index].iter().rev().find_map(|l| {
        let l = l.trim();
        let name = l.strip_prefix('[')?.split(']').next()?.trim_matches(['[', ' ']);
        Some(name)
    });
    match table {
        Some(t) if plain(t) => Some(format!("{t}.{key}")),
        Some(_) => None,
        None => Some(key.to_owned()),
    }
}

/// What went wrong with a value, in words that never include the value: figment's own wording quotes it
/// (`found string "…"`), and it may be a secret pasted into the wrong key. `depth` is the key's: 1 for a
/// section.
fn describe(kind: &figment::error::Kind, depth: usize) -> String {
    use figment::error::Kind;
    match kind {
        Kind::InvalidType(actual, expected) => {
            format!("expected {}, got {}", expected_words(expected), kind_of(actual))
        }
        Kind::InvalidValue(actual, expected) => format!(
            "expected {}, got {}",
            expected_words(expected),
            match actual {
                Actual::Unsigned(_) | Actual::Signed(_) | Actual::Float(_) => "a number outside that range",
                other => kind_of(other),
            }
        ),
        Kind::InvalidLength(_, expected) => format!("wrong number of items, expected {expected}"),
        Kind::UnknownVariant(_, expected) => format!("unknown value, expected one of {}", one_of(expected)),
        Kind::UnknownField(_, expected) => format!(
            "unknown {}, expected one of {}",
            if depth <= 1 { "section" } else { "key" },
            one_of(expected)
        ),
        Kind::ISizeOutOfRange(_) | Kind::USizeOutOfRange(_) => "number out of range".into(),
        Kind::Unsupported(_) | Kind::UnsupportedKey(..) => "unsupported value".into(),
        // Key names and herald's own value-free messages (see `values`).
        Kind::Message(_) | Kind::MissingField(_) | Kind::DuplicateField(_) => kind.to_string(),
    }
}

use figment::error::Actual;

/// `` `amqp`, `state`, `http` ``.
fn one_of(names: &[&str]) -> String {
    names.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(", ")
}

/// serde's name of what a key takes (`u16`, `a sequence`), as an operator says it.
fn expected_words(expected: &str) -> String {
    match expected {
        "u8" => "a whole number from 0 to 255".into(),
        "u16" => "a whole number from 0 to 65535".into(),
        "u32" => "a whole number from 0 to 4294967295".into(),
        "u64" | "u128" | "usize" => "a whole number, 0 or more".into(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "a boolean" => "`true` or `false`".into(),
        "a sequence" => "a list, like [\"a\", \"b\"]".into(),
        "a map" => "a table".into(),
        other if other.starts_with("struct ") => "a table".into(),
        other => other.into(),
    }
}

/// The kind of value found, never the value.
fn kind_of(actual: &Actual) -> &'static str {
    match actual {
        Actual::Bool(_) => "a true/false value",
        Actual::Unsigned(_) | Actual::Signed(_) => "a whole number",
        Actual::Float(_) => "a decimal number",
        Actual::Char(_) | Actual::Str(_) | Actual::Bytes(_) => "text",
        Actual::Seq => "a list",
        Actual::Map => "a table",
        Actual::Unit | Actual::Option => "no value",
        _ => "another kind of value",
    }
}

impl From<figment::Error> for ConfigError {
    /// One problem per key, without the profile prefix.
    fn from(err: figment::Error) -> Self {
        ConfigError::Values(
            err.into_iter()
                .map(|e| Problem {
                    key: e.path.join("."),
                    problem: describe(&e.kind, e.path.len()),
                    source: e.metadata.as_ref().map(|m| m.name.to_string()),
                })
                .collect(),
        )
    }
}
