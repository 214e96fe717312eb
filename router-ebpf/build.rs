// Rebuild when bpf-linker changes, so a relinked toolchain is picked up.
fn main() {
    if let Ok(p) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", p.display());
    }
}
