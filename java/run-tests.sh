#!/usr/bin/env bash
# Builds the Java client and runs all its tests (JUnit 4 through Maven Surefire, the Android API
# check included) offline, without Maven Central: .mvn/maven.config gives every mvn run in java/
# maven-settings.xml, which mirrors every repository to Debian's /usr/share/maven-repo and keeps
# the local repository in target/m2 (see README.md, "Build and test"). Debian packages needed:
#   apt-get install -y default-jdk-headless maven junit4 libsurefire-java \
#     libmaven-compiler-plugin-java libmaven-resources-plugin-java libmaven-jar-plugin-java \
#     libmaven-install-plugin-java libmaven-clean-plugin-java
# The interop tests run the Rust binary ../target/debug/p2pnc, which this script builds with
# `cargo build` first; set P2PNC_BIN=/path/to/p2pnc to use another binary and skip that step.
# Ends with the line "N passed, N failed"; exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")"

# The plugins of pom.xml, as Debian packages them: without them Maven fails with a long
# resolution error; say which packages to install instead.
missing=
for plugin in maven-clean-plugin/3.2.0 maven-resources-plugin/3.3.0 maven-compiler-plugin/3.10.1 \
        maven-surefire-plugin/2.22.3 maven-jar-plugin/3.3.0 maven-install-plugin/3.1.0; do
    [ -d "/usr/share/maven-repo/org/apache/maven/plugins/$plugin" ] || missing="$missing $plugin"
done
[ -f /usr/share/java/junit4.jar ] || missing="$missing junit4"
if [ -n "$missing" ] || ! command -v mvn >/dev/null 2>&1 || ! command -v javac >/dev/null 2>&1; then
    echo "missing for the offline build:${missing:- mvn or javac}; install them with"
    echo "  apt-get install -y default-jdk-headless maven junit4 libsurefire-java libmaven-compiler-plugin-java \\"
    echo "    libmaven-resources-plugin-java libmaven-jar-plugin-java libmaven-install-plugin-java libmaven-clean-plugin-java"
    echo "0 passed, 1 failed"
    exit 1
fi

if [ -z "${P2PNC_BIN:-}" ] && command -v cargo >/dev/null 2>&1; then
    if ! (cd .. && cargo build --quiet); then
        echo "cargo build failed: the interop tests need target/debug/p2pnc"
        echo "0 passed, 1 failed"
        exit 1
    fi
fi

rm -rf target/classes target/test-classes target/surefire-reports
# Maven's launcher prints colour resets even in batch mode: strip them so that the last line
# is exactly the summary.
mvn -B -ntp -o -Dstyle.color=never package 2>&1 | sed -u 's/\x1b\[[0-9;]*m//g'
status=${PIPESTATUS[0]}
echo

tests=0 failed=0 skipped=0
for report in target/surefire-reports/TEST-*.xml; do
    [ -f "$report" ] || continue
    head=$(grep -o '<testsuite [^>]*>' "$report" | head -n 1)
    attr() { printf '%s' "$head" | grep -o " $1=\"[0-9]*\"" | grep -o '[0-9]\+' || echo 0; }
    tests=$((tests + $(attr tests)))
    failed=$((failed + $(attr failures) + $(attr errors)))
    skipped=$((skipped + $(attr skipped)))
done
passed=$((tests - failed - skipped))
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
    failed=1 # the build itself failed
fi
echo "$passed passed, $failed failed"
[ "$status" -eq 0 ] && [ "$failed" -eq 0 ]
