fn main() {
    eprintln!("syncer: not implemented yet (see the syncer issue)");
    std::process::exit(1);
}
