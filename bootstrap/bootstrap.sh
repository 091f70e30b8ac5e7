#!/usr/bin/env bash
# Bootstrap shared state and CI identity for convex-gcp (see bootstrap/README.md).
#
# Creates, or leaves alone when they already exist (safe to re-run):
#   - a GCS bucket for the Pulumi self-managed backend: versioned, uniform bucket-level access,
#     public access prevention enforced;
#   - a Cloud KMS key ring and ONE key PER STACK (convex-gcp-<stack>), each stack's secrets provider
#     (gcpkms://...): whoever can decrypt with a stack's key can read that stack's secrets;
#   - a Workload Identity Federation pool and GitHub OIDC provider limited to one repository;
#   - three service accounts, with the roles listed in bootstrap/README.md:
#       previewer       any run of the repository (pull requests): may decrypt only the dev key;
#       prod-previewer  only jobs in the `prod-preview` GitHub environment: may decrypt the other keys;
#       deployer        only jobs in the `dev`/`prod` GitHub environments.
#
# Usage:
#   STATE_PROJECT=my-ops-project GITHUB_REPO=acme/convex-gcp \
#   TARGET_PROJECTS="example-convex-dev example-convex-prod" bootstrap/bootstrap.sh
#
# Optional: REGION (asia-northeast1), BUCKET (<STATE_PROJECT>-pulumi-state), KEYRING (convex-gcp),
# KEY_PREFIX (convex-gcp: keys convex-gcp-<stack>), POOL (github), PROVIDER (github-actions),
# STACKS ("dev prod"), PR_STACKS ("dev": the stacks any pull request may preview),
# INIT_STACKS=1 to also run `pulumi login`/`stack init` (needs the pulumi CLI) so the stack files
# record the secrets provider.
set -euo pipefail

: "${STATE_PROJECT:?set STATE_PROJECT: the project holding the state bucket, KMS key and CI identity}"
: "${GITHUB_REPO:?set GITHUB_REPO: owner/name of the GitHub repository allowed to deploy}"
: "${TARGET_PROJECTS:?set TARGET_PROJECTS: the project ids the stacks deploy into (gcp:project of each stack)}"
REGION="${REGION:-asia-northeast1}"
BUCKET="${BUCKET:-${STATE_PROJECT}-pulumi-state}"
KEYRING="${KEYRING:-convex-gcp}"
KEY_PREFIX="${KEY_PREFIX:-convex-gcp}"
POOL="${POOL:-github}"
PROVIDER="${PROVIDER:-github-actions}"
STACKS="${STACKS:-dev prod}"
PR_STACKS="${PR_STACKS:-dev}"
PROD_PREVIEW_ENVIRONMENT="${PROD_PREVIEW_ENVIRONMENT:-prod-preview}"
DEPLOYER="convex-gcp-deployer@${STATE_PROJECT}.iam.gserviceaccount.com"
PREVIEWER="convex-gcp-previewer@${STATE_PROJECT}.iam.gserviceaccount.com"
PROD_PREVIEWER="convex-gcp-prod-previewer@${STATE_PROJECT}.iam.gserviceaccount.com"

if [[ ! "$GITHUB_REPO" =~ ^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$ ]]; then
  echo "GITHUB_REPO must look like owner/name, got '$GITHUB_REPO'" >&2
  exit 2
fi

say() { printf '==> %s\n' "$*"; }

# pr_stack STACK: true when pull requests from any branch may preview STACK (decrypt its key).
pr_stack() { [[ " ${PR_STACKS} " == *" $1 "* ]]; }

# Conditions go through files: --condition=KEY=VALUE,... would split an expression at its commas.
CONDITIONS="$(mktemp -d)"
trap 'rm -rf "$CONDITIONS"' EXIT
# condition TITLE EXPRESSION: prints the path of a condition file. JSON, so the expressions here use
# only single-quoted CEL strings.
condition() {
  printf '{"title": "%s", "expression": "%s"}\n' "$1" "$2" >"${CONDITIONS}/$1.json"
  printf '%s' "${CONDITIONS}/$1.json"
}

# exists <describe command...>: true when the resource is already there.
exists() { "$@" >/dev/null 2>&1; }

say "Enabling the APIs the bootstrap and the deployer need in ${STATE_PROJECT}"
gcloud services enable storage.googleapis.com cloudkms.googleapis.com iam.googleapis.com \
  iamcredentials.googleapis.com sts.googleapis.com cloudresourcemanager.googleapis.com \
  serviceusage.googleapis.com --project="$STATE_PROJECT"

say "State bucket gs://${BUCKET}"
if ! exists gcloud storage buckets describe "gs://${BUCKET}" --project="$STATE_PROJECT"; then
  gcloud storage buckets create "gs://${BUCKET}" --project="$STATE_PROJECT" --location="$REGION" \
    --uniform-bucket-level-access --public-access-prevention
fi
# Enforced on every run so a bucket created by hand converges too. Versioning keeps every state
# checkpoint: a bad write can be rolled back by restoring a previous object generation.
gcloud storage buckets update "gs://${BUCKET}" --versioning --uniform-bucket-level-access \
  --public-access-prevention

say "KMS key ring ${KEYRING} (${REGION}), one key per stack"
if ! exists gcloud kms keyrings describe "$KEYRING" --location="$REGION" --project="$STATE_PROJECT"; then
  gcloud kms keyrings create "$KEYRING" --location="$REGION" --project="$STATE_PROJECT"
fi
for stack in $STACKS; do
  key="${KEY_PREFIX}-${stack}"
  if ! exists gcloud kms keys describe "$key" --keyring="$KEYRING" --location="$REGION" --project="$STATE_PROJECT"; then
    gcloud kms keys create "$key" --keyring="$KEYRING" --location="$REGION" --project="$STATE_PROJECT" \
      --purpose=encryption --rotation-period=90d \
      --next-rotation-time="$(date -u -d '+90 days' +%Y-%m-%dT%H:%M:%SZ)"
  fi
done
KEY_BASE="projects/${STATE_PROJECT}/locations/${REGION}/keyRings/${KEYRING}/cryptoKeys/${KEY_PREFIX}"

say "Service accounts"
for account in convex-gcp-deployer convex-gcp-previewer convex-gcp-prod-previewer; do
  if ! exists gcloud iam service-accounts describe "${account}@${STATE_PROJECT}.iam.gserviceaccount.com" --project="$STATE_PROJECT"; then
    gcloud iam service-accounts create "$account" --project="$STATE_PROJECT" \
      --display-name="convex-gcp ${account#convex-gcp-} (GitHub Actions)"
  fi
done

say "Workload Identity Federation pool ${POOL} and provider ${PROVIDER}"
if ! exists gcloud iam workload-identity-pools describe "$POOL" --location=global --project="$STATE_PROJECT"; then
  gcloud iam workload-identity-pools create "$POOL" --location=global --project="$STATE_PROJECT" \
    --display-name="GitHub Actions"
fi
# Only tokens from this repository are accepted at all; which identity a job may use is narrowed
# further by the service-account bindings below.
if ! exists gcloud iam workload-identity-pools providers describe "$PROVIDER" --workload-identity-pool="$POOL" \
    --location=global --project="$STATE_PROJECT"; then
  gcloud iam workload-identity-pools providers create-oidc "$PROVIDER" --workload-identity-pool="$POOL" \
    --location=global --project="$STATE_PROJECT" --display-name="GitHub ${GITHUB_REPO}" \
    --issuer-uri="https://token.actions.githubusercontent.com" \
    --attribute-mapping="google.subject=assertion.sub,attribute.repository=assertion.repository,attribute.environment=assertion.environment,attribute.ref=assertion.ref" \
    --attribute-condition="assertion.repository == '${GITHUB_REPO}'"
fi
PROJECT_NUMBER="$(gcloud projects describe "$STATE_PROJECT" --format='value(projectNumber)')"
POOL_ID="projects/${PROJECT_NUMBER}/locations/global/workloadIdentityPools/${POOL}"

say "Who may impersonate which account"
# Any workflow run of the repository (pull requests included) may use the previewer: it can decrypt
# only the keys of PR_STACKS, because `pulumi preview` runs the pull request's own Python.
gcloud iam service-accounts add-iam-policy-binding "$PREVIEWER" --project="$STATE_PROJECT" \
  --role=roles/iam.workloadIdentityUser \
  --member="principalSet://iam.googleapis.com/${POOL_ID}/attribute.repository/${GITHUB_REPO}" >/dev/null
# The other stacks' previews need a job in the prod-preview environment (token subject
# repo:OWNER/NAME:environment:prod-preview), which waits for one of its required reviewers.
gcloud iam service-accounts add-iam-policy-binding "$PROD_PREVIEWER" --project="$STATE_PROJECT" \
  --role=roles/iam.workloadIdentityUser \
  --member="principal://iam.googleapis.com/${POOL_ID}/subject/repo:${GITHUB_REPO}:environment:${PROD_PREVIEW_ENVIRONMENT}" >/dev/null
# Only jobs running in the dev or prod GitHub environment may deploy (restrict both environments to
# the main branch; prod's has required reviewers).
for environment in dev prod; do
  gcloud iam service-accounts add-iam-policy-binding "$DEPLOYER" --project="$STATE_PROJECT" \
    --role=roles/iam.workloadIdentityUser \
    --member="principal://iam.googleapis.com/${POOL_ID}/subject/repo:${GITHUB_REPO}:environment:${environment}" >/dev/null
done

say "State bucket and KMS key access"
gcloud storage buckets add-iam-policy-binding "gs://${BUCKET}" --member="serviceAccount:${DEPLOYER}" \
  --role=roles/storage.objectAdmin >/dev/null
for account in "$PREVIEWER" "$PROD_PREVIEWER"; do
  gcloud storage buckets add-iam-policy-binding "gs://${BUCKET}" --member="serviceAccount:${account}" \
    --role=roles/storage.objectViewer >/dev/null
  # A preview may take the stack's lock; it may write nothing else (no checkpoint, no history).
  gcloud storage buckets add-iam-policy-binding "gs://${BUCKET}" --member="serviceAccount:${account}" \
    --role=roles/storage.objectUser \
    --condition-from-file="$(condition pulumi-locks-only "resource.name.startsWith('projects/_/buckets/${BUCKET}/objects/.pulumi/locks/')")" >/dev/null
done
for stack in $STACKS; do
  if pr_stack "$stack"; then previewer="$PREVIEWER"; else previewer="$PROD_PREVIEWER"; fi
  # Key-level grants (never key ring or project): a previewer can decrypt exactly its stacks' keys.
  for account in "$DEPLOYER" "$previewer"; do
    gcloud kms keys add-iam-policy-binding "${KEY_PREFIX}-${stack}" --keyring="$KEYRING" --location="$REGION" \
      --project="$STATE_PROJECT" --member="serviceAccount:${account}" \
      --role=roles/cloudkms.cryptoKeyEncrypterDecrypter >/dev/null
  done
done

# The roles the program's resources need, and nothing else (bootstrap/README.md says why each).
# Not here on purpose: iam.serviceAccountAdmin (its setIamPolicy on every account would let the deployer
# grant itself any account), iam.serviceAccountUser and secretmanager.admin (granted narrower below).
DEPLOYER_ROLES=(
  roles/serviceusage.serviceUsageAdmin
  roles/compute.networkAdmin
  roles/compute.securityAdmin
  roles/compute.instanceAdmin.v1
  roles/compute.loadBalancerAdmin
  roles/cloudsql.admin
  roles/servicenetworking.networksAdmin
  roles/iap.admin
  roles/logging.configWriter
  roles/monitoring.editor
  roles/dns.admin
)
# The program grants its VM account exactly these project roles; the deployer may grant no others.
GRANTABLE="'roles/cloudsql.client', 'roles/cloudsql.instanceUser', 'roles/cloudsql.viewer', 'roles/logging.logWriter', 'roles/monitoring.metricWriter'"
# Manage the VM's service account without iam.serviceAccounts.setIamPolicy / actAs.
SA_ROLE=convexDeployerServiceAccounts
SA_PERMISSIONS=iam.serviceAccounts.create,iam.serviceAccounts.get,iam.serviceAccounts.list,iam.serviceAccounts.update,iam.serviceAccounts.delete,iam.serviceAccounts.enable,iam.serviceAccounts.disable

for project in $TARGET_PROJECTS; do
  say "Roles in ${project}"
  for role in "${DEPLOYER_ROLES[@]}"; do
    gcloud projects add-iam-policy-binding "$project" --member="serviceAccount:${DEPLOYER}" --role="$role" \
      --condition=None >/dev/null
  done
  gcloud projects add-iam-policy-binding "$project" --member="serviceAccount:${DEPLOYER}" \
    --role=roles/resourcemanager.projectIamAdmin \
    --condition-from-file="$(condition convex-vm-roles-only "api.getAttribute('iam.googleapis.com/modifiedGrantsByRole', []).hasOnly([${GRANTABLE}])")" >/dev/null

  if exists gcloud iam roles describe "$SA_ROLE" --project="$project"; then
    gcloud iam roles update "$SA_ROLE" --project="$project" --permissions="$SA_PERMISSIONS" --stage=GA --quiet >/dev/null
  else
    gcloud iam roles create "$SA_ROLE" --project="$project" --title="convex-gcp deployer: service accounts" \
      --permissions="$SA_PERMISSIONS" --stage=GA >/dev/null
  fi
  gcloud projects add-iam-policy-binding "$project" --member="serviceAccount:${DEPLOYER}" \
    --role="projects/${project}/roles/${SA_ROLE}" --condition=None >/dev/null

  # Secret Manager names resources with the project NUMBER in conditions. Project-level checks
  # (secrets.create, list) see the project; every other check sees the secret, which must be ours.
  number="$(gcloud projects describe "$project" --format='value(projectNumber)')"
  gcloud projects add-iam-policy-binding "$project" --member="serviceAccount:${DEPLOYER}" \
    --role=roles/secretmanager.admin \
    --condition-from-file="$(condition convex-secrets-only "resource.type == 'cloudresourcemanager.googleapis.com/Project' || resource.name.startsWith('projects/${number}/secrets/convex-')")" >/dev/null

  # actAs (attach the VM's account to the VM): IAM conditions cannot select service accounts by name
  # (iam.googleapis.com has no resource attributes), so the grant goes on the VM accounts themselves
  # once the first `pulumi up` created them; until then it is project-wide. Re-run this script after
  # a stack's first deploy to narrow it.
  vm_accounts=()
  for stack in $STACKS; do
    account_id="convex-${stack}-vm"
    email="${account_id:0:30}@${project}.iam.gserviceaccount.com"
    if exists gcloud iam service-accounts describe "$email" --project="$project"; then
      vm_accounts+=("$email")
    fi
  done
  if ((${#vm_accounts[@]})); then
    for email in "${vm_accounts[@]}"; do
      gcloud iam service-accounts add-iam-policy-binding "$email" --project="$project" \
        --member="serviceAccount:${DEPLOYER}" --role=roles/iam.serviceAccountUser >/dev/null
    done
    if exists gcloud projects remove-iam-policy-binding "$project" --member="serviceAccount:${DEPLOYER}" \
        --role=roles/iam.serviceAccountUser --condition=None; then
      say "Narrowed actAs in ${project} to ${vm_accounts[*]}"
    fi
  else
    gcloud projects add-iam-policy-binding "$project" --member="serviceAccount:${DEPLOYER}" \
      --role=roles/iam.serviceAccountUser --condition=None >/dev/null
    say "No convex-<stack>-vm account in ${project} yet: actAs is project-wide until you re-run this script after the first deploy"
  fi

  # Previews read current settings (data sources, refresh). roles/viewer has no secretmanager.versions.access.
  for account in "$PREVIEWER" "$PROD_PREVIEWER"; do
    gcloud projects add-iam-policy-binding "$project" --member="serviceAccount:${account}" --role=roles/viewer \
      --condition=None >/dev/null
  done
done

BACKEND_URL="gs://${BUCKET}"
if [[ "${INIT_STACKS:-0}" == "1" ]]; then
  say "Recording each stack's secrets provider in its stack file"
  pulumi login "$BACKEND_URL"
  for stack in $STACKS; do
    provider="gcpkms://${KEY_BASE}-${stack}"
    if pulumi stack select "organization/convex-gcp/${stack}" >/dev/null 2>&1; then
      pulumi stack change-secrets-provider --stack "organization/convex-gcp/${stack}" "$provider"
    else
      pulumi stack init "organization/convex-gcp/${stack}" --secrets-provider="$provider"
    fi
  done
fi

cat <<EOF

Done. Set these GitHub repository variables (Settings > Secrets and variables > Actions > Variables):
  gh variable set PULUMI_BACKEND_URL --body '${BACKEND_URL}'
  gh variable set GCP_WORKLOAD_IDENTITY_PROVIDER --body '${POOL_ID}/providers/${PROVIDER}'
  gh variable set GCP_PREVIEW_SERVICE_ACCOUNT --body '${PREVIEWER}'
  gh variable set GCP_PROD_PREVIEW_SERVICE_ACCOUNT --body '${PROD_PREVIEWER}'
  gh variable set GCP_DEPLOY_SERVICE_ACCOUNT --body '${DEPLOYER}'
Create the GitHub environments:
  dev, prod        deployment branches: main only; prod with required reviewers
  ${PROD_PREVIEW_ENVIRONMENT}     required reviewers + "Prevent self-review" (approving runs the PR's code with the prod key)
Secrets provider of each stack: gcpkms://${KEY_BASE}-<stack>
  (INIT_STACKS=1 records it; then commit Pulumi.<stack>.yaml: secretsprovider + encryptedkey)
EOF
