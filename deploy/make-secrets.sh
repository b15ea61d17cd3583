#!/usr/bin/env bash
# Writes deploy/secrets/{api_keys.txt,metrics_key.txt} and deploy/.env for compose.yaml, once.
# Existing files are kept. The key files are mode 0644 so the containers' non-root users can
# read the bind-mounted copies; the folder itself is 0700.
set -euo pipefail
cd "$(dirname "$0")"
token() { python3 -c 'import secrets; print(secrets.token_urlsafe(32))'; }
# Standard Webhooks format: whsec_ + base64 of 32 random bytes
whsec() { python3 -c 'import base64, secrets; print("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())'; }
umask 077
mkdir -p secrets
if [ ! -f secrets/api_keys.txt ]; then
    app_key=$(token)
    internal_key=$(token)
    metrics_key=$(token)
    printf '# KEY:SCOPE, one a line; classify = label and action only, internal = also confidence and /metrics,\n# metrics = /metrics only (Prometheus)\n%s:classify\n%s:internal\n%s:metrics\n' \
        "$app_key" "$internal_key" "$metrics_key" >secrets/api_keys.txt
    printf '%s\n' "$metrics_key" >secrets/metrics_key.txt
    chmod 0644 secrets/api_keys.txt secrets/metrics_key.txt
    echo "wrote secrets/api_keys.txt (your application's key: $app_key) and secrets/metrics_key.txt"
fi
if [ ! -f .env ] || ! grep -q '^GUARDCAL_WEBHOOK_SECRET=whsec_' .env; then
    [ -f .env ] && echo "replacing the webhook secret in .env: guardcal now needs the whsec_ format"
    printf 'GUARDCAL_WEBHOOK_SECRET=%s\n' "$(whsec)" >.env
    echo "wrote .env (webhook signing secret shared by guardcal and the receiver)"
fi
