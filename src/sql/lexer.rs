//! Tokens of AWS IoT SQL (spec/aws-iot-shadow-rules.md §2.3).
//!
//! Keywords are case-insensitive; identifiers (attribute names) keep their
//! case. Both quote styles make string literals. Every token carries its
//! byte offset, so that errors point at the place in the statement.

use std::fmt;

/// A token and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    /// What it is.
    pub kind: Kind,
    /// Byte offset in the statement.
    pub at: usize,
}

/// Token kinds.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A keyword, uppercased.
    Keyword(Keyword),
    /// An attribute or function name.
    Ident(String),
    /// `@name`
    Variable(String),
    /// A string literal (either quote style), unescaped.
    Str(String),
    /// An integer literal.
    Int(i64),
    /// A decimal literal.
    Decimal(f64),
    /// Punctuation and operators.
    Sym(Sym),
    /// End of input.
    End,
}

/// The keywords of the language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyword {
    Select,
    From,
    Where,
    As,
    And,
    Or,
    Not,
    Case,
    When,
    Then,
    Else,
    End,
    Value,
    Set,
    Null,
    True,
    False,
}

impl Keyword {
    fn parse(word: &str) -> Option<Self> {
        use Keyword::*;
        Some(match word.to_ascii_uppercase().as_str() {
            "SELECT" => Select,
            "FROM" => From,
            "WHERE" => Where,
            "AS" => As,
            "AND" => And,
            "OR" => Or,
            "NOT" => Not,
            "CASE" => Case,
            "WHEN" => When,
            "THEN" => Then,
            "ELSE" => Else,
            "END" => End,
            "VALUE" => Value,
            "SET" => Set,
            "NULL" => Null,
            "TRUE" => True,
            "FALSE" => False,
            _ => return None,
        })
    }
}

/// Operators and punctuation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sym {
    Star,
    Comma,
    Dot,
    LParen,
    RParen,
    LBracket,
    RBracket,
    LBrace,
    RBrace,
    Colon,
    Plus,
    Minus,
    Slash,
    Percent,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Keyword(k) => write!(f, "{}", format!("{k:?}").to_uppercase()),
            Self::Ident(s) => write!(f, "`{s}`"),
            Self::Variable(s) => write!(f, "@{s}"),
            Self::Str(s) => write!(f, "'{s}'"),
            Self::Int(i) => write!(f, "{i}"),
            Self::Decimal(d) => write!(f, "{d}"),
            Self::Sym(s) => write!(f, "{s:?}"),
            Self::End => f.write_str("the end of the statement"),
        }
    }
}

/// A problem in a statement, at a byte offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at {at}: {message}")]
pub struct SqlError {
    /// Byte offset in the statement.
    pub at: usize,
    /// What is wrong.
    pub message: String,
}

impl SqlError {
    /// An error at a byte offset.
    pub fn new(at: usize, message: impl Into<String>) -> Self {
        Self {
            at,
            message: message.into(),
        }
    }
}

/// Splits a statement into tokens, ending with [`Kind::End`].
pub fn tokenize(text: &str) -> Result<Vec<Token>, SqlError> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let at = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let sym = |s| Some((s, 1));
        let two = bytes.get(i + 1).copied();
        let symbol = match c {
            b'*' => sym(Sym::Star),
            b',' => sym(Sym::Comma),
            b'.' if !two.is_some_and(|d| d.is_ascii_digit()) => sym(Sym::Dot),
            b'(' => sym(Sym::LParen),
            b')' => sym(Sym::RParen),
            b'[' => sym(Sym::LBracket),
            b']' => sym(Sym::RBracket),
            b'{' => sym(Sym::LBrace),
            b'}' => sym(Sym::RBrace),
            b':' => sym(Sym::Colon),
            b'+' => sym(Sym::Plus),
            b'-' => sym(Sym::Minus),
            b'/' => sym(Sym::Slash),
            b'%' => sym(Sym::Percent),
            b'=' => sym(Sym::Eq),
            b'!' if two == Some(b'=') => Some((Sym::Ne, 2)),
            b'<' if two == Some(b'>') => Some((Sym::Ne, 2)),
            b'<' if two == Some(b'=') => Some((Sym::Le, 2)),
            b'<' => sym(Sym::Lt),
            b'>' if two == Some(b'=') => Some((Sym::Ge, 2)),
            b'>' => sym(Sym::Gt),
            _ => None,
        };
        if let Some((s, len)) = symbol {
            out.push(Token {
                kind: Kind::Sym(s),
                at,
            });
            i += len;
            continue;
        }
        match c {
            b'\'' | b'"' => {
                let (s, next) = string(text, i)?;
                out.push(Token {
                    kind: Kind::Str(s),
                    at,
                });
                i = next;
            }
            b'0'..=b'9' | b'.' => {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
                    i += 1;
                }
                if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
                    i += 1;
                    if i < bytes.len() && (bytes[i] == b'-' || bytes[i] == b'+') {
                        i += 1;
                    }
                    while i < bytes.len() && bytes[i].is_ascii_digit() {
                        i += 1;
                    }
                }
                let lit = &text[start..i];
                let kind = match lit.parse::<i64>() {
                    Ok(n) => Kind::Int(n),
                    Err(_) => match lit.parse::<f64>() {
                        // Under 2016-03-23 a whole number such as 10.0 is an Int.
                        Ok(d) if d.fract() == 0.0 && d.abs() < 9.0e15 => Kind::Int(d as i64),
                        Ok(d) => Kind::Decimal(d),
                        Err(_) => return Err(SqlError::new(at, format!("bad number `{lit}`"))),
                    },
                };
                out.push(Token { kind, at });
            }
            b'@' => {
                let (name, next) = ident(text, i + 1);
                if name.is_empty() {
                    return Err(SqlError::new(at, "`@` must be followed by a variable name"));
                }
                out.push(Token {
                    kind: Kind::Variable(name.to_owned()),
                    at,
                });
                i = next;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let (word, next) = ident(text, i);
                let kind = match Keyword::parse(word) {
                    Some(k) => Kind::Keyword(k),
                    None => Kind::Ident(word.to_owned()),
                };
                out.push(Token { kind, at });
                i = next;
            }
            _ => {
                let ch = text[i..].chars().next().unwrap_or('?');
                return Err(SqlError::new(at, format!("unexpected character `{ch}`")));
            }
        }
    }
    out.push(Token {
        kind: Kind::End,
        at: text.len(),
    });
    Ok(out)
}

fn ident(text: &str, start: usize) -> (&str, usize) {
    let bytes = text.as_bytes();
    let mut i = start;
    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
        i += 1;
    }
    (&text[start..i], i)
}

/// A quoted string starting at `start`; a doubled quote is a literal quote.
fn string(text: &str, start: usize) -> Result<(String, usize), SqlError> {
    let bytes = text.as_bytes();
    let quote = bytes[start];
    let mut out = String::new();
    let mut i = start + 1;
    loop {
        let Some(rest) = text.get(i..) else {
            return Err(SqlError::new(start, "unterminated string"));
        };
        let Some(off) = rest.find(quote as char) else {
            return Err(SqlError::new(start, "unterminated string"));
        };
        out.push_str(&rest[..off]);
        i += off + 1;
        if bytes.get(i) == Some(&quote) {
            out.push(quote as char);
            i += 1;
        } else {
            return Ok((out, i));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<Kind> {
        tokenize(text)
            .expect("valid")
            .into_iter()
            .map(|t| t.kind)
            .collect()
    }

    #[test]
    fn a_typical_statement() {
        let k =
            kinds("select a.b, \"x\" AS c FROM 'sensors/+/temp' where temp >= 30.5 and n <> 10.0");
        assert_eq!(k[0], Kind::Keyword(Keyword::Select));
        assert_eq!(k[1], Kind::Ident("a".into()));
        assert_eq!(k[2], Kind::Sym(Sym::Dot));
        assert!(k.contains(&Kind::Str("x".into())));
        assert!(k.contains(&Kind::Str("sensors/+/temp".into())));
        assert!(k.contains(&Kind::Sym(Sym::Ge)));
        assert!(k.contains(&Kind::Decimal(30.5)));
        assert!(
            k.contains(&Kind::Int(10)),
            "10.0 is an Int under 2016-03-23"
        );
        assert!(k.contains(&Kind::Sym(Sym::Ne)));
        assert_eq!(k.last(), Some(&Kind::End));
    }

    #[test]
    fn strings_variables_and_errors() {
        assert_eq!(kinds("'it''s'")[0], Kind::Str("it's".into()));
        assert_eq!(kinds("@t")[0], Kind::Variable("t".into()));
        assert_eq!(kinds("1e3")[0], Kind::Int(1000));
        let e = tokenize("SELECT 'open").expect_err("unterminated");
        assert_eq!(e.at, 7);
        let e = tokenize("SELECT a ; b").expect_err("bad char");
        assert_eq!(e.at, 9);
        assert!(tokenize("SELECT @ FROM 'a'").is_err());
    }
}
