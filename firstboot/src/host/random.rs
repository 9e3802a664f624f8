//! Random bytes from the kernel's generator, for ids, nonces, tokens and UUIDs.

use std::io::Read;

/// `N` random bytes read from `/dev/urandom` (never blocks; the kernel seeds it at boot).
pub fn bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut out = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn two_draws_differ() {
        let a = super::bytes::<16>().unwrap();
        assert_ne!(a, super::bytes::<16>().unwrap());
        assert_ne!(a, [0u8; 16]);
    }
}
