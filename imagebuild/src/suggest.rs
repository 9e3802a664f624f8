//! "Did you mean" suggestions for mistyped names and keys.

pub use firstboot::suggest::closest;

/// `" Did you mean `x`?"` or an empty string.
pub fn did_you_mean<'a, I>(word: &str, candidates: I) -> String
where
    I: IntoIterator<Item = &'a str>,
{
    match closest(word, candidates) {
        Some(c) => format!(" Did you mean `{c}`?"),
        None => String::new(),
    }
}
