#!/usr/bin/env bash
# Publish throughput benchmark (issue 5): pushes a >= 2 GiB image to a local
# streaming fake Artifactory, once with `curl -T` (the baseline) and once with
# vmscan's Artifactory client (tests/bench_publish.rs), and reports throughput
# and the client's peak RSS.
# Goals: vmscan >= 80% of curl's throughput, peak RSS <= 64 MiB.
#
# Env: BENCH_SIZE_MIB (default 2048, a multiple of 256),
#      BENCH_TRUST_HEADERS=1 (the fake echoes X-Checksum-* instead of hashing
#      the body: measures the client without the fake's hashing cost).
set -euo pipefail

cd "$(dirname "$0")/.."
SIZE_MIB=${BENCH_SIZE_MIB:-2048}
SEED_MIB=256
(( SIZE_MIB % SEED_MIB == 0 )) || { echo "BENCH_SIZE_MIB must be a multiple of $SEED_MIB" >&2; exit 2; }

tmp=$(mktemp -d /tmp/bench-publish.XXXXXX)
fake_pid=
cleanup() {
    if [[ -n $fake_pid ]]; then kill "$fake_pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

echo "== building the benchmark driver (release)"
cargo test --release --test bench_publish --no-run 2>&1 | tail -n 2

echo "== making a ${SIZE_MIB} MiB image of random data in $tmp"
head -c $((SEED_MIB << 20)) /dev/urandom > "$tmp/seed"
for _ in $(seq $((SIZE_MIB / SEED_MIB))); do cat "$tmp/seed"; done > "$tmp/image.img"
rm -f "$tmp/seed"
bytes=$(stat -c %s "$tmp/image.img")

fake_args=()
[[ ${BENCH_TRUST_HEADERS:-0} == 1 ]] && fake_args+=(--trust-headers)
python3 scripts/bench/fake_artifactory.py "${fake_args[@]}" > "$tmp/fake.out" 2>&1 &
fake_pid=$!
for _ in $(seq 100); do
    grep -q '^PORT ' "$tmp/fake.out" 2>/dev/null && break
    sleep 0.1
done
port=$(awk '/^PORT /{print $2}' "$tmp/fake.out")
[[ -n $port ]] || { echo "the fake did not start:" >&2; cat "$tmp/fake.out" >&2; exit 1; }
base="http://127.0.0.1:$port/artifactory"
echo "== fake Artifactory at $base (mode: ${fake_args[*]:-hashing the body})"

cat "$tmp/image.img" > /dev/null # warm the page cache for both runs

echo "== curl -T"
/usr/bin/time -f '%M' -o "$tmp/curl.rss" \
    curl -sS -o "$tmp/curl.body" -w '%{http_code} %{time_total}\n' \
    -T "$tmp/image.img" "$base/bench-local/bench/curl.img" > "$tmp/curl.w"
read -r code curl_secs < "$tmp/curl.w"
[[ $code == 201 ]] || { echo "curl got HTTP $code: $(cat "$tmp/curl.body")" >&2; exit 1; }
curl_rss_kib=$(tail -n 1 "$tmp/curl.rss")

echo "== vmscan (ArtifactStore::deploy)"
BENCH_PUBLISH_URL=$base BENCH_PUBLISH_FILE=$tmp/image.img BENCH_CURL_SECS=$curl_secs \
    cargo test -q --release --test bench_publish -- --ignored --nocapture --exact \
    publish_streams_a_big_image 2>&1 | tee "$tmp/vmscan.out"
val() { awk -F= -v k="$1" '$1 == "BENCH " k {print $2}' "$tmp/vmscan.out"; }
vm_secs=$(val vmscan_secs)
vm_rss_kib=$(val vmscan_peak_rss_kib)
[[ -n $vm_secs ]] || { echo "the vmscan run printed no result" >&2; exit 1; }

awk -v b="$bytes" -v cs="$curl_secs" -v vs="$vm_secs" -v cr="$curl_rss_kib" -v vr="$vm_rss_kib" 'BEGIN {
    mb = b / 1e6; ratio = cs / vs; rss = vr / 1024
    printf "\n== summary (%.0f bytes, %.2f GiB)\n", b, b / 2^30
    printf "curl -T : %7.2f s  %7.1f MB/s  peak RSS %6.1f MiB\n", cs, mb / cs, cr / 1024
    printf "vmscan  : %7.2f s  %7.1f MB/s  peak RSS %6.1f MiB\n", vs, mb / vs, rss
    printf "ratio vmscan/curl throughput: %.3f (goal >= 0.80) %s\n", ratio, (ratio >= 0.8 ? "PASS" : "FAIL")
    printf "vmscan peak RSS: %.1f MiB (goal <= 64 MiB) %s\n", rss, (rss <= 64 ? "PASS" : "FAIL")
}'
