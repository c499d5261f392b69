# ZooKeeper 3.8 from Debian (`zookeeper`), for scripts/test, scripts/demo and the e2e harness
# (tests/src/zookeeper.rs calls zookeeper_classpath, so the classpath has one definition).
# Source it after scripts/lib/common.sh (ensure_zookeeper needs apt_install); do not run it.
#
# Why not zkServer.sh: the Debian package's script expects a prepared environment
# (/etc/zookeeper/conf/environment, /var/log/zookeeper, a zookeeper user). We start
#   java -cp "$(zookeeper_classpath)" -Dzookeeper.root.logger=INFO,CONSOLE \
#       org.apache.zookeeper.server.quorum.QuorumPeerMain our-zoo.cfg
# with our own zoo.cfg instead, so several throwaway servers can run side by side.

ensure_zookeeper() {
    apt_install zookeeper
}

# Prints the Java classpath a standalone server needs: the package's conf directory (for
# log4j.properties) and the jars installed by `zookeeper`, `libzookeeper-java` and the Java
# packages `libzookeeper-java` depends on, joined with ':'.
#
# Checked by starting the server (Debian 12, zookeeper 3.8.0-11+deb12u2, OpenJDK 17):
# - zookeeper.jar alone already serves: Debian writes the runtime dependencies (netty, jetty,
#   jackson, metrics, commons-cli/io, snappy, slf4j-api, jute) into its manifest Class-Path.
#   What it lacks is an slf4j binding, so it logs nothing; slf4j-log4j12 + log4j 1.2 (from the
#   direct dependencies) give us the log we print when a test fails.
# - Taking *every* jar of the dependencies does NOT start: libslf4j-java installs five slf4j
#   bindings plus the jcl/log4j/jul bridges, and slf4j aborts with "Detected both
#   jcl-over-slf4j.jar AND bound slf4j-jcl.jar ... preempting StackOverflowError". So all
#   bindings but slf4j-log4j12, and the *-over-slf4j / jul-to-slf4j bridges, are left out.
# - Direct dependencies only, not recursive: the manifests already pull in what the jars
#   need, and the recursive closure adds commons-logging and tomcat for nothing.
zookeeper_classpath() {
    local pkgs=(zookeeper libzookeeper-java) jars=() dep f
    # Depends looks like "a, b (>= 1) | c, d:any"; keep the first alternative of each,
    # without the version or the arch qualifier.
    while IFS= read -r dep; do
        dep=${dep%%|*}
        dep=${dep%%(*}
        dep=${dep%%:*}
        dep=${dep//[[:space:]]/}
        [ -n "$dep" ] && pkgs+=("$dep")
    done < <(dpkg-query -W -f='${Depends}\n' libzookeeper-java 2>/dev/null | tr ',' '\n')
    while IFS= read -r f; do
        case "$f" in
            # Conflicting slf4j bindings and bridges (see above).
            */slf4j-jcl.jar|*/slf4j-jdk14.jar|*/slf4j-nop.jar|*/slf4j-simple.jar|*/slf4j-migrator.jar) ;;
            */jcl-over-slf4j.jar|*/log4j-over-slf4j.jar|*/jul-to-slf4j.jar) ;;
            # /usr/share/java holds each jar twice (versioned file + unversioned symlink) and
            # maven-repo holds copies; take the real files of /usr/share/java, once each.
            /usr/share/java/*.jar) [ -L "$f" ] || jars+=("$f") ;;
        esac
    done < <(dpkg -L "${pkgs[@]}" 2>/dev/null)
    if ! [[ " ${jars[*]} " == *"/zookeeper.jar "* ]]; then
        echo "zookeeper_classpath: zookeeper.jar not found; is the zookeeper package installed? (ensure_zookeeper)" >&2
        return 1
    fi
    local IFS=:
    echo "/etc/zookeeper/conf:${jars[*]}"
}
