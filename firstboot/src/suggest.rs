//! "Did you mean" suggestions for mistyped names and keys, shared by firstboot and imagebuild.

/// The closest candidate to `word`, when it is close enough to be a plausible typo. Case and
/// `-` versus `_` are ignored, so `token-file` finds `token_file`.
pub fn closest<'a, I>(word: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let word = word.to_ascii_lowercase().replace('-', "_");
    candidates
        .into_iter()
        .map(|c| {
            let norm = c.to_ascii_lowercase().replace('-', "_");
            (strsim::damerau_levenshtein(&word, &norm), c)
        })
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_near_names_only() {
        assert_eq!(closest("rpi55", ["rpi4", "rpi5", "cm5"]), Some("rpi5"));
        assert_eq!(closest("bord", ["board", "media"]), Some("board"));
        assert_eq!(closest("sever", ["servers", "nodes"]), Some("servers"));
        assert_eq!(
            closest("token-file", ["token", "token_file"]),
            Some("token_file")
        );
        assert_eq!(closest("banana", ["rpi4", "rpi5", "servers"]), None);
    }
}
