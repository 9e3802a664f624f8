//! The cluster token: a secret newtype that never prints its value.

use std::fmt;

/// Shortest token we accept: K3s treats the token as a password, so it must not be guessable.
pub const MIN_TOKEN_LEN: usize = 16;
/// Longest token we accept; longer values are almost certainly a pasted file by mistake.
pub const MAX_TOKEN_LEN: usize = 256;

/// The shared cluster secret. `Debug` and `Display` print `<redacted>`; use [`Token::expose`]
/// only where the secret must be written (the 0600 K3s config) or hashed.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a secret after checking it with [`Token::problem`].
    pub fn new(secret: String) -> Result<Self, TokenProblem> {
        match Self::problem(&secret) {
            Some(p) => Err(p),
            None => Ok(Token(secret)),
        }
    }

    /// The secret itself. Callers must not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What is wrong with a candidate token, if anything (never includes the value).
    pub fn problem(secret: &str) -> Option<TokenProblem> {
        let len = secret.chars().count();
        if len < MIN_TOKEN_LEN {
            return Some(TokenProblem::TooShort(len));
        }
        if len > MAX_TOKEN_LEN {
            return Some(TokenProblem::TooLong(len));
        }
        if !secret.chars().all(|c| c.is_ascii_graphic()) || secret.contains(':') {
            return Some(TokenProblem::BadCharacters);
        }
        if secret.starts_with("K10") {
            return Some(TokenProblem::FullSecureToken);
        }
        None
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why a token was refused; the messages never contain the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenProblem {
    /// Fewer than [`MIN_TOKEN_LEN`] characters (the count is carried, not the value).
    TooShort(usize),
    /// More than [`MAX_TOKEN_LEN`] characters.
    TooLong(usize),
    /// Whitespace, a colon, or a non-ASCII character.
    BadCharacters,
    /// A full `K10...::server:...` token; we build that ourselves from the CA hash.
    FullSecureToken,
}

impl fmt::Display for TokenProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenProblem::TooShort(n) => write!(
                f,
                "the token has {n} characters; it needs at least {MIN_TOKEN_LEN} so it cannot be guessed"
            ),
            TokenProblem::TooLong(n) => {
                write!(f, "the token has {n} characters; at most {MAX_TOKEN_LEN} are allowed")
            }
            TokenProblem::BadCharacters => f.write_str(
                "the token may only use printable ASCII without spaces or ':' (K3s splits tokens on ':')",
            ),
            TokenProblem::FullSecureToken => f.write_str(
                "the token looks like a full K3s secure token (K10...); give only the shared password part",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_the_secret() {
        let t = Token::new("abcdefghijklmnopqrstuvwxyz".into()).unwrap();
        assert_eq!(format!("{t}"), "<redacted>");
        assert_eq!(format!("{t:?}"), "<redacted>");
        assert_eq!(t.expose(), "abcdefghijklmnopqrstuvwxyz");
    }

    #[test]
    fn refuses_weak_or_malformed_tokens() {
        assert_eq!(Token::problem("short"), Some(TokenProblem::TooShort(5)));
        assert_eq!(
            Token::problem("has a space in it ok"),
            Some(TokenProblem::BadCharacters)
        );
        assert_eq!(
            Token::problem("server:abcdefghijklmnop"),
            Some(TokenProblem::BadCharacters)
        );
        assert_eq!(
            Token::problem("K10abcdefabcdefabcdef"),
            Some(TokenProblem::FullSecureToken)
        );
        assert_eq!(
            Token::problem(&"x".repeat(300)),
            Some(TokenProblem::TooLong(300))
        );
        assert_eq!(Token::problem("0123456789abcdef"), None);
    }
}
