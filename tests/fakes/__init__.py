"""Stand-ins for the tools that tools/e2e.py and tools/acceptance.py drive; each module's docstring
names the upstream source or doc it copies:
- convex_http.py: Convex HTTP API, https://docs.convex.dev/http-api/ and get-convex/convex-backend
  crates/postgres/src/sql.rs (the documents table)
- npx_stand_in.py: the Convex CLI's self-hosted deploy, get-convex/convex-backend
  npm-packages/convex/src/cli/lib/utils/utils.ts
- pulumi_cli.py: the Pulumi CLI, https://github.com/pulumi/pulumi/tree/master/pkg/cmd/pulumi
"""
