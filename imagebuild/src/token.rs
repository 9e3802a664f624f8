//! New cluster tokens, from the operating system's random number generator.

use anyhow::{bail, Context, Result};

/// Random bytes in a token: 160 bits, shown as 40 hex digits.
const TOKEN_BYTES: usize = 20;

/// A new random cluster token that firstboot's schema accepts.
pub fn new_token() -> Result<String> {
    let bytes = firstboot::host::random::bytes::<TOKEN_BYTES>()
        .context("reading the system random number generator (/dev/urandom)")?;
    let token = hex::encode(bytes);
    if let Some(p) = firstboot::config::Token::problem(&token) {
        bail!("internal error: a generated token was refused: {p}");
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_valid_and_differ() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_eq!(a.len(), 40);
        assert_ne!(a, b);
        assert!(firstboot::config::Token::new(a).is_ok());
    }
}
