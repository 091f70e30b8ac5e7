"""Stand-in `npm` and `npx` for tools/e2e.py (installed on PATH under both names).

npm: `npm ci` refuses to run without package-lock.json, as the real one does. npx: `convex deploy`
reads CONVEX_SELF_HOSTED_URL and CONVEX_SELF_HOSTED_ADMIN_KEY (npm-packages/convex/src/cli/lib/utils/
utils.ts) and pushes to the fake backend with "Authorization: Convex <key>". Every call is logged
as a JSON line to $FAKE_NPX_LOG.

Upstream: https://github.com/get-convex/convex-backend/blob/main/npm-packages/convex/src/cli/lib/utils/utils.ts
(self-hosted URL and admin key from the environment); `npm ci` without a lockfile:
https://docs.npmjs.com/cli/commands/npm-ci ("a package-lock.json or npm-shrinkwrap.json is required")."""

import json
import os
import sys

# Only json, os and sys up front: a start costs ~7 ms, ~40 ms with urllib.request, which only
# `npx convex deploy` needs.
name = os.path.basename(sys.argv[0])
args = sys.argv[1:]
with open(os.environ["FAKE_NPX_LOG"], "a") as log:
    log.write(json.dumps({"tool": name, "args": args, "cwd": os.getcwd(),
                          "url": os.environ.get("CONVEX_SELF_HOSTED_URL", ""), "deployment": os.environ.get("CONVEX_DEPLOYMENT")}) + "\n")
if name == "npm":
    # https://docs.npmjs.com/cli/commands/npm-ci: "a package-lock.json or npm-shrinkwrap.json is required".
    if args[:1] == ["ci"] and not os.path.exists("package-lock.json"):
        sys.exit("npm error The `npm ci` command can only install with an existing package-lock.json")
    sys.exit(0)
if args[:3] != ["--no-install", "convex", "deploy"]:
    sys.exit(f"stand-in npx: unexpected {args}")
url, key = os.environ.get("CONVEX_SELF_HOSTED_URL"), os.environ.get("CONVEX_SELF_HOSTED_ADMIN_KEY")
if not url or not key:
    sys.exit("✖ No CONVEX_DEPLOYMENT set, run `npx convex dev` to configure a Convex project")
# The deploy pushes to the self-hosted URL with "Authorization: Convex <admin key>"
# (https://github.com/get-convex/convex-backend/blob/main/npm-packages/convex/src/cli/lib/utils/utils.ts).
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402

request = urllib.request.Request(f"{url}/test/push", data=b"{}", method="POST", headers={"Authorization": f"Convex {key}", "Content-Type": "application/json"})
try:
    urllib.request.urlopen(request, timeout=10)
except urllib.error.HTTPError as error:
    sys.exit(f"✖ Error: Unable to push deployment config to {url}\n{error.code} {error.read().decode()}")
print("✔ Deployed Convex functions to " + url)
