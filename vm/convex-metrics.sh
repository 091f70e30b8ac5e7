#!/bin/bash
# One HTTP exchange per connection on stdin/stdout (systemd-socket-activate --inetd, started by
# vm/units/convex-metrics.service): the Convex backend's /metrics, rewritten so that Prometheus
# parsers accept it, for the collector (vm/units/convex-collector.service) to scrape.
#
# Why a rewrite: every Convex histogram is a VictoriaMetrics histogram (register_convex_histogram! ->
# VMHistogram, get-convex/convex-backend crates/metrics/src/macros.rs), which Convex's fork of
# rust-prometheus encodes as `# TYPE <name> vmhistogram` followed by `<name>_bucket{...,vmrange="a...b"}`,
# `<name>_sum` and `<name>_count` per label set (get-convex/rust-prometheus src/encoder/text.rs).
# Prometheus' text parser rejects an unknown TYPE and with it the whole scrape (model/textparse
# promparse.go: "invalid metric type"), and that parser is the OpenTelemetry Collector's prometheus
# receiver's. So: vmrange buckets dropped, <name>_sum and <name>_count kept as the counters
# <name>_sum_total and <name>_count_total (rates and means stay exact), everything else as it is.
# Empty lines and leading blanks are not used: this file travels as systemd StandardInputText= lines.
set -u
# Bytes, not characters: ${#out} is the Content-Length.
export LC_ALL=C
upstream=${CONVEX_METRICS_UPSTREAM:-http://127.0.0.1:3210/metrics}
# Read the request head first: closing with unread bytes can reset the connection before the answer.
while IFS= read -r -t 5 line; do
line=${line%$'\r'}
[[ -n $line ]] || break
done
if ! body=$(curl -sf --max-time 10 "$upstream"); then
printf 'HTTP/1.0 502 Bad Gateway\r\nContent-Type: text/plain\r\n\r\n%s unreachable\n' "$upstream"
exit 0
fi
declare -A histogram=() sums=() counts=()
order=() help="" out=""
re_type='^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) ([a-z]+)$'
re_sample='^([a-zA-Z_:][a-zA-Z0-9_:]*)(.*)$'
while IFS= read -r line; do
if [[ $line == '# HELP '* ]]; then
help=$line
elif [[ $line =~ $re_type ]]; then
if [[ ${BASH_REMATCH[2]} == vmhistogram ]]; then
histogram[${BASH_REMATCH[1]}]=1
order+=("${BASH_REMATCH[1]}")
else
[[ -z $help ]] || out+=$help$'\n'
out+=$line$'\n'
fi
help=""
elif [[ $line =~ $re_sample ]]; then
name=${BASH_REMATCH[1]} rest=${BASH_REMATCH[2]}
base=${name%_*}
if [[ -n ${histogram[$base]:-} && $name =~ _(bucket|sum|count)$ ]]; then
case ${name##*_} in
sum) sums[$base]+="${base}_sum_total${rest}"$'\n' ;;
count) counts[$base]+="${base}_count_total${rest}"$'\n' ;;
esac
else
out+=$line$'\n'
fi
elif [[ -n $line ]]; then
out+=$line$'\n'
fi
done <<<"$body"
for base in "${order[@]}"; do
out+="# TYPE ${base}_sum_total counter"$'\n'"${sums[$base]:-}"
out+="# TYPE ${base}_count_total counter"$'\n'"${counts[$base]:-}"
done
printf 'HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: %s\r\n\r\n' "${#out}"
printf '%s' "$out"
