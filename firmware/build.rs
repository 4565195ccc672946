//! Puts `memory.x` (the STM32F411RE's memory map) where cortex-m-rt's `link.x` finds it, for the
//! board binary. `-Tlink.x` itself is passed for the thumb target only, in `.cargo/config.toml`.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_BOARD_NUCLEO_F411RE").is_none() {
        return;
    }
    let Some(out) = env::var_os("OUT_DIR").map(PathBuf::from) else {
        println!("cargo::error=OUT_DIR is not set");
        return;
    };
    if let Err(e) = fs::copy("memory.x", out.join("memory.x")) {
        println!("cargo::error=cannot copy memory.x into {}: {e}", out.display());
        return;
    }
    println!("cargo:rustc-link-search={}", out.display());
}
