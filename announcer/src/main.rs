fn main() {
    eprintln!("announcer: not implemented yet (see the announcer issue)");
    std::process::exit(1);
}
