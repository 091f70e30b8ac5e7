#!/usr/bin/env bash
# Bootstrap shared state and CI identity for convex-gcp (see bootstrap/README.md).
#
# Creates, or leaves alone when they already exist (safe to re-run):
#   - a GCS bucket for the Pulumi self-managed backend: versioned, uniform bucket-level access,
#     public access prevention enforced;
#   - a Cloud KMS key ring and key, the stacks' secrets provider (gcpkms://...);
#   - a Workload Identity Federation pool and GitHub OIDC provider limited to one repository;
#   - two service accounts: a read-only previewer (pull requests) and a deployer (dev/prod
#     environments only), with the roles listed in bootstrap/README.md.
#
# Usage:
#   STATE_PROJECT=my-ops-project GITHUB_REPO=acme/convex-gcp \
#   TARGET_PROJECTS="example-convex-dev example-convex-prod" bootstrap/bootstrap.sh
#
# Optional: REGION (asia-northeast1), BUCKET (<STATE_PROJECT>-pulumi-state), KEYRING (convex-gcp),
# KEY (pulumi-secrets), POOL (github), PROVIDER (github-actions), STACKS ("dev prod"),
# INIT_STACKS=1 to also run `pulumi login`/`stack init` (needs the pulumi CLI) so the stack files
# record the secrets provider.
set -euo pipefail

: "${STATE_PROJECT:?set STATE_PROJECT: the project holding the state bucket, KMS key and CI identity}"
: "${GITHUB_REPO:?set GITHUB_REPO: owner/name of the GitHub repository allowed to deploy}"
: "${TARGET_PROJECTS:?set TARGET_PROJECTS: the project ids the stacks deploy into (gcp:project of each stack)}"
REGION="${REGION:-asia-northeast1}"
BUCKET="${BUCKET:-${STATE_PROJECT}-pulumi-state}"
KEYRING="${KEYRING:-convex-gcp}"
KEY="${KEY:-pulumi-secrets}"
POOL="${POOL:-github}"
PROVIDER="${PROVIDER:-github-actions}"
STACKS="${STACKS:-dev prod}"
DEPLOYER="convex-gcp-deployer@${STATE_PROJECT}.iam.gserviceaccount.com"
PREVIEWER="convex-gcp-previewer@${STATE_PROJECT}.iam.gserviceaccount.com"

if [[ ! "$GITHUB_REPO" =~ ^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$ ]]; then
  echo "GITHUB_REPO must look like owner/name, got '$GITHUB_REPO'" >&2
  exit 2
fi

say() { printf '==> %s\n' "$*"; }

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

say "KMS key ${KEYRING}/${KEY} (${REGION})"
if ! exists gcloud kms keyrings describe "$KEYRING" --location="$REGION" --project="$STATE_PROJECT"; then
  gcloud kms keyrings create "$KEYRING" --location="$REGION" --project="$STATE_PROJECT"
fi
if ! exists gcloud kms keys describe "$KEY" --keyring="$KEYRING" --location="$REGION" --project="$STATE_PROJECT"; then
  gcloud kms keys create "$KEY" --keyring="$KEYRING" --location="$REGION" --project="$STATE_PROJECT" \
    --purpose=encryption --rotation-period=90d \
    --next-rotation-time="$(date -u -d '+90 days' +%Y-%m-%dT%H:%M:%SZ)"
fi
KEY_ID="projects/${STATE_PROJECT}/locations/${REGION}/keyRings/${KEYRING}/cryptoKeys/${KEY}"

say "Service accounts"
for account in convex-gcp-deployer convex-gcp-previewer; do
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
# Any workflow run of the repository (pull requests included) may preview...
gcloud iam service-accounts add-iam-policy-binding "$PREVIEWER" --project="$STATE_PROJECT" \
  --role=roles/iam.workloadIdentityUser \
  --member="principalSet://iam.googleapis.com/${POOL_ID}/attribute.repository/${GITHUB_REPO}" >/dev/null
# ...but only jobs running in the dev or prod GitHub environment may deploy (the token's subject is
# repo:OWNER/NAME:environment:ENV; prod's environment has required reviewers).
for environment in dev prod; do
  gcloud iam service-accounts add-iam-policy-binding "$DEPLOYER" --project="$STATE_PROJECT" \
    --role=roles/iam.workloadIdentityUser \
    --member="principal://iam.googleapis.com/${POOL_ID}/subject/repo:${GITHUB_REPO}:environment:${environment}" >/dev/null
done

say "State bucket and KMS key access"
gcloud storage buckets add-iam-policy-binding "gs://${BUCKET}" --member="serviceAccount:${DEPLOYER}" \
  --role=roles/storage.objectAdmin >/dev/null
gcloud storage buckets add-iam-policy-binding "gs://${BUCKET}" --member="serviceAccount:${PREVIEWER}" \
  --role=roles/storage.objectViewer >/dev/null
# A preview may take the stack's lock; it may write nothing else (no checkpoint, no history).
gcloud storage buckets add-iam-policy-binding "gs://${BUCKET}" --member="serviceAccount:${PREVIEWER}" \
  --role=roles/storage.objectUser \
  --condition="title=pulumi-locks-only,expression=resource.name.startsWith('projects/_/buckets/${BUCKET}/objects/.pulumi/locks/')" >/dev/null
for account in "$DEPLOYER" "$PREVIEWER"; do
  gcloud kms keys add-iam-policy-binding "$KEY" --keyring="$KEYRING" --location="$REGION" --project="$STATE_PROJECT" \
    --member="serviceAccount:${account}" --role=roles/cloudkms.cryptoKeyEncrypterDecrypter >/dev/null
done

# The roles the program's resources need, and nothing else (bootstrap/README.md says why each).
DEPLOYER_ROLES=(
  roles/serviceusage.serviceUsageAdmin
  roles/compute.networkAdmin
  roles/compute.securityAdmin
  roles/compute.instanceAdmin.v1
  roles/compute.loadBalancerAdmin
  roles/iam.serviceAccountAdmin
  roles/iam.serviceAccountUser
  roles/cloudsql.admin
  roles/servicenetworking.networksAdmin
  roles/secretmanager.admin
  roles/iap.admin
  roles/logging.configWriter
  roles/monitoring.editor
)
# The program grants its VM account exactly these project roles; the deployer may grant no others.
GRANTABLE="'roles/cloudsql.client', 'roles/cloudsql.instanceUser', 'roles/logging.logWriter', 'roles/monitoring.metricWriter'"

for project in $TARGET_PROJECTS; do
  say "Roles in ${project}"
  for role in "${DEPLOYER_ROLES[@]}"; do
    gcloud projects add-iam-policy-binding "$project" --member="serviceAccount:${DEPLOYER}" --role="$role" \
      --condition=None >/dev/null
  done
  gcloud projects add-iam-policy-binding "$project" --member="serviceAccount:${DEPLOYER}" \
    --role=roles/resourcemanager.projectIamAdmin \
    --condition="title=convex-vm-roles-only,expression=api.getAttribute('iam.googleapis.com/modifiedGrantsByRole', []).hasOnly([${GRANTABLE}])" >/dev/null
  # Previews read current settings (data sources, refresh); viewer reads no secret payloads.
  gcloud projects add-iam-policy-binding "$project" --member="serviceAccount:${PREVIEWER}" --role=roles/viewer \
    --condition=None >/dev/null
done

BACKEND_URL="gs://${BUCKET}"
SECRETS_PROVIDER="gcpkms://${KEY_ID}"
if [[ "${INIT_STACKS:-0}" == "1" ]]; then
  say "Recording the secrets provider in the stack files"
  pulumi login "$BACKEND_URL"
  for stack in $STACKS; do
    if pulumi stack select "organization/convex-gcp/${stack}" >/dev/null 2>&1; then
      pulumi stack change-secrets-provider --stack "organization/convex-gcp/${stack}" "$SECRETS_PROVIDER"
    else
      pulumi stack init "organization/convex-gcp/${stack}" --secrets-provider="$SECRETS_PROVIDER"
    fi
  done
fi

cat <<EOF

Done. Set these GitHub repository variables (Settings > Secrets and variables > Actions > Variables):
  gh variable set PULUMI_BACKEND_URL --body '${BACKEND_URL}'
  gh variable set GCP_WORKLOAD_IDENTITY_PROVIDER --body '${POOL_ID}/providers/${PROVIDER}'
  gh variable set GCP_PREVIEW_SERVICE_ACCOUNT --body '${PREVIEWER}'
  gh variable set GCP_DEPLOY_SERVICE_ACCOUNT --body '${DEPLOYER}'
Create the GitHub environments 'dev' and 'prod'; give 'prod' required reviewers.
Secrets provider for the stack files: ${SECRETS_PROVIDER}
  (INIT_STACKS=1 records it; then commit Pulumi.<stack>.yaml: secretsprovider + encryptedkey)
EOF
