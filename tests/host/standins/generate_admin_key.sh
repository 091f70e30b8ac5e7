#!/bin/sh
# Stand-in for the backend image's ./generate_admin_key.sh: prints "<instance name>|<hex>" (the upstream
# script prints only the key), derived from INSTANCE_NAME and INSTANCE_SECRET as the real key is.
printf '%s|%s\n' "${INSTANCE_NAME:-convex-self-hosted}" "$(printf '%s' "$INSTANCE_SECRET" | sha256sum | cut -d' ' -f1)"
