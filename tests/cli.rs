//! Command-line tests of both binaries.
