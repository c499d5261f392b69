# Chromium from Debian (`chromium`), for the status page test (tests/tests/status_page.rs), which
# drives it headless over the DevTools protocol. Source it after scripts/lib/common.sh
# (ensure_chromium needs apt_install); do not run it.

ensure_chromium() {
    apt_install chromium
    if [[ ! -x /usr/bin/chromium ]]; then
        echo "/usr/bin/chromium is missing after installing the chromium package" >&2
        return 1
    fi
}
