//! Integration tests live in `it/`; see `it/main.rs`.
