#!/usr/bin/env bash
# Bootstrap shared state and CI identities for convex-gcp (see bootstrap/README.md).
#
# Converges (creates what is missing, re-applies every setting and grant; safe to re-run):
#   - a GCS bucket for the Pulumi self-managed backend: versioned, soft delete (state history the
#     deployers cannot erase), uniform bucket-level access, public access prevention;
#   - a Cloud KMS key ring and ONE key PER STACK (convex-gcp-<stack>), each stack's secrets provider;
#   - a Workload Identity Federation pool and GitHub OIDC provider admitting one repository by its
#     numeric ids, with an attribute that says "a job of the deploy workflow on main, in environment E";
#   - per stack, in STATE_PROJECT: a deployer (convex-gcp-deploy-<stack>) and a previewer
#     (convex-gcp-preview-<stack>); in the stack's own project: the VM's service account
#     (convex-<stack>-vm), the only account the deployer may act as.
#
# Usage:
#   STATE_PROJECT=acme-ops GITHUB_REPO=acme/convex-gcp GITHUB_REPOSITORY_ID=123 GITHUB_OWNER_ID=456 \
#   STACK_PROJECTS="dev=acme-convex-dev prod=acme-convex-prod" bootstrap/bootstrap.sh
#
# Optional: REGION (asia-northeast1), ZONE (<REGION>-a: the VMs' zone), BUCKET (<STATE_PROJECT>-pulumi-state),
# KEYRING (convex-gcp), KEY_PREFIX (convex-gcp), POOL (github), PROVIDER (github-actions),
# PR_STACKS ("dev": stacks whose preview any branch may run), DEPLOY_WORKFLOW (.github/workflows/deploy.yml),
# SOFT_DELETE (90d), INIT_STACKS=1 to also run `pulumi stack init`/`change-secrets-provider`,
# ACCEPTANCE_PROJECT (a sandbox project holding nothing else: the acceptance identity, its own state bucket
# and key), ACCEPTANCE_WORKFLOW (.github/workflows/acceptance.yml).
set -euo pipefail

die() { echo "bootstrap: $*" >&2; exit 2; }

: "${STATE_PROJECT:?set STATE_PROJECT: the project holding the state bucket, KMS keys and CI identities}"
: "${GITHUB_REPO:?set GITHUB_REPO: owner/name of the GitHub repository allowed to deploy}"
# google-github-actions/auth docs/SECURITY_CONSIDERATIONS.md: condition on the numeric, never re-used
# ids (a deleted repository's or organisation's name can be claimed by someone else).
: "${GITHUB_REPOSITORY_ID:?set GITHUB_REPOSITORY_ID: curl -s https://api.github.com/repos/OWNER/NAME | jq .id}"
: "${GITHUB_OWNER_ID:?set GITHUB_OWNER_ID: curl -s https://api.github.com/repos/OWNER/NAME | jq .owner.id}"
[[ -z "${TARGET_PROJECTS:-}" ]] || die "TARGET_PROJECTS is replaced by STACK_PROJECTS=\"dev=<dev project> prod=<prod project>\": each stack's deployer gets roles in its own project only"
: "${STACK_PROJECTS:?set STACK_PROJECTS: stack=project pairs, e.g. \"dev=acme-convex-dev prod=acme-convex-prod\"}"
REGION="${REGION:-asia-northeast1}"
ZONE="${ZONE:-${REGION}-a}"
BUCKET="${BUCKET:-${STATE_PROJECT}-pulumi-state}"
KEYRING="${KEYRING:-convex-gcp}"
KEY_PREFIX="${KEY_PREFIX:-convex-gcp}"
POOL="${POOL:-github}"
PROVIDER="${PROVIDER:-github-actions}"
PR_STACKS="${PR_STACKS:-dev}"
DEPLOY_WORKFLOW="${DEPLOY_WORKFLOW:-.github/workflows/deploy.yml}"
ACCEPTANCE_PROJECT="${ACCEPTANCE_PROJECT:-}"
ACCEPTANCE_WORKFLOW="${ACCEPTANCE_WORKFLOW:-.github/workflows/acceptance.yml}"
SOFT_DELETE="${SOFT_DELETE:-90d}"
PULUMI_PROJECT=convex-gcp
LEGACY_ACCOUNTS="convex-gcp-deployer convex-gcp-previewer convex-gcp-prod-previewer"

[[ "$GITHUB_REPO" =~ ^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$ ]] || die "GITHUB_REPO must look like owner/name, got '$GITHUB_REPO'"
[[ "$GITHUB_REPOSITORY_ID" =~ ^[0-9]+$ ]] || die "GITHUB_REPOSITORY_ID must be the numeric repository id, got '$GITHUB_REPOSITORY_ID'"
[[ "$GITHUB_OWNER_ID" =~ ^[0-9]+$ ]] || die "GITHUB_OWNER_ID must be the numeric owner id, got '$GITHUB_OWNER_ID'"

declare -A PROJECT_OF=()
STACKS=""
for pair in $STACK_PROJECTS; do
  stack="${pair%%=*}" project="${pair#*=}"
  # Service account ids are 6-30 characters: convex-gcp-preview-<stack> leaves 11 for the stack.
  [[ "$pair" == *=* && "$stack" =~ ^[a-z][a-z0-9]{0,10}$ ]] || die "STACK_PROJECTS entry '$pair': want <stack>=<project>, stack lowercase letters/digits, at most 11"
  [[ "$project" =~ ^[a-z][-a-z0-9]{4,28}[a-z0-9]$ ]] || die "STACK_PROJECTS entry '$pair': '$project' is not a project id"
  [[ "$project" != "$STATE_PROJECT" ]] || die "stack $stack: keep STATE_PROJECT out of the stack projects (its bucket and keys hold every stack's state)"
  for other in "${!PROJECT_OF[@]}"; do
    [[ "${PROJECT_OF[$other]}" != "$project" ]] || die "stacks $other and $stack share project $project: each stack needs its own project, or its deployer could change the other's resources"
  done
  PROJECT_OF[$stack]="$project"
  STACKS="${STACKS:+$STACKS }$stack"
done
for stack in $PR_STACKS; do
  [[ -n "${PROJECT_OF[$stack]:-}" ]] || die "PR_STACKS names '$stack', which is not in STACK_PROJECTS"
  [[ "$stack" != prod ]] || die "PR_STACKS must not include prod: any branch could then read prod (its preview runs through the deploy workflow on main instead)"
done

say() { printf '==> %s\n' "$*"; }

# pr_stack STACK: true when any branch may preview STACK.
pr_stack() { [[ " ${PR_STACKS} " == *" $1 "* ]]; }
deployer() { printf 'convex-gcp-deploy-%s@%s.iam.gserviceaccount.com' "$1" "$STATE_PROJECT"; }
previewer() { printf 'convex-gcp-preview-%s@%s.iam.gserviceaccount.com' "$1" "$STATE_PROJECT"; }
# The program's VM account (components/identity.py: account_id "convex-<stack>-vm", cut to 30).
vm_account_id() { local id="convex-$1-vm"; printf '%s' "${id:0:30}"; }
# The account the VM acts as to grant the Convex database role its privileges (convex_gcp/db_grants.py
# grant_account_id: "convex-<stack>-sqlgrant", cut to 30).
grant_account_id() { local id="convex-$1-sqlgrant"; printf '%s' "${id:0:30}"; }

# Conditions go through files: --condition=KEY=VALUE,... would split an expression at its commas.
CONDITIONS="$(mktemp -d)"
trap 'rm -rf "$CONDITIONS"' EXIT
# condition TITLE EXPRESSION: prints the path of a condition file (JSON: expressions use only
# single-quoted CEL strings).
condition() {
  printf '{"title": "%s", "expression": "%s"}\n' "$1" "$2" >"${CONDITIONS}/$1.json"
  printf '%s' "${CONDITIONS}/$1.json"
}

# exists <describe command...>: true when the resource is already there.
exists() { "$@" >/dev/null 2>&1; }

# ensure_account ID PROJECT DISPLAY_NAME [DESCRIPTION]: the service account, created on the first run only.
ensure_account() {
  local -a description=()
  [[ -z ${4:-} ]] || description=(--description="$4")
  exists gcloud iam service-accounts describe "$1@$2.iam.gserviceaccount.com" --project="$2" ||
    gcloud iam service-accounts create "$1" --project="$2" --display-name="$3" "${description[@]}"
}

# custom_role ID PROJECT TITLE PERMISSIONS: create the project role or converge its permissions.
custom_role() {
  if exists gcloud iam roles describe "$1" --project="$2"; then
    gcloud iam roles update "$1" --project="$2" --permissions="$4" --stage=GA --quiet >/dev/null
  else
    gcloud iam roles create "$1" --project="$2" --title="$3" --permissions="$4" --stage=GA >/dev/null
  fi
}

say "Enabling the APIs the bootstrap needs in ${STATE_PROJECT}"
gcloud services enable storage.googleapis.com cloudkms.googleapis.com iam.googleapis.com \
  iamcredentials.googleapis.com sts.googleapis.com cloudresourcemanager.googleapis.com \
  serviceusage.googleapis.com --project="$STATE_PROJECT"

say "State bucket gs://${BUCKET}"
if ! exists gcloud storage buckets describe "gs://${BUCKET}" --project="$STATE_PROJECT"; then
  gcloud storage buckets create "gs://${BUCKET}" --project="$STATE_PROJECT" --location="$REGION" \
    --uniform-bucket-level-access --public-access-prevention
fi
# Re-applied on every run. Versioning: every overwritten checkpoint stays as a noncurrent generation.
# Soft delete: a deleted generation (the deployer holds storage.objects.delete, which Pulumi needs to
# overwrite its checkpoint and drop locks) stays restorable for SOFT_DELETE; restoring and changing the
# policy need storage.objects.restore / storage.buckets.update, which no CI identity holds.
gcloud storage buckets update "gs://${BUCKET}" --versioning --uniform-bucket-level-access \
  --public-access-prevention --soft-delete-duration="$SOFT_DELETE"

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

say "CI service accounts (one deployer and one previewer per stack)"
for stack in $STACKS; do
  for kind in deploy preview; do
    ensure_account "convex-gcp-${kind}-${stack}" "$STATE_PROJECT" "convex-gcp ${kind}er of ${stack} (GitHub Actions)"
  done
done
# Earlier versions had one deployer for every stack and previewers with roles/viewer: switched off
# (bootstrap/README.md says how to delete them once nothing refers to them).
for account in $LEGACY_ACCOUNTS; do
  email="${account}@${STATE_PROJECT}.iam.gserviceaccount.com"
  if exists gcloud iam service-accounts describe "$email" --project="$STATE_PROJECT"; then
    gcloud iam service-accounts disable "$email" --project="$STATE_PROJECT" >/dev/null
    say "Disabled the shared account ${email}"
  fi
done

say "Workload Identity Federation pool ${POOL} and provider ${PROVIDER}"
if ! exists gcloud iam workload-identity-pools describe "$POOL" --location=global --project="$STATE_PROJECT"; then
  gcloud iam workload-identity-pools create "$POOL" --location=global --project="$STATE_PROJECT" \
    --display-name="GitHub Actions"
fi
# `attribute.deploy` is the token's subject (repo:<owner>/<name>:environment:<env> for a job that names
# an environment) when the job comes from the deploy workflow at main on a run for main, and "none" for
# every other token. The subject alone carries no branch, and a job may name an environment nobody
# configured (github/docs#3126), so the deployers are bound to this attribute, never to the subject.
# Claims (docs.github.com, "OpenID Connect reference"): `ref` is the ref the run is for;
# `job_workflow_ref` is <owner>/<repo>/<path>@<ref> of the workflow file the job comes from, so a job
# added to another workflow, or deploy.yml from a branch, maps to "none". `sub` is always present
# (`environment` is not). No commas: gcloud splits the mapping at them.
DEPLOY_REF="${GITHUB_REPO}/${DEPLOY_WORKFLOW}@refs/heads/main"
DEPLOY_ATTRIBUTE="assertion.ref == 'refs/heads/main' && assertion.job_workflow_ref == '${DEPLOY_REF}' ? assertion.sub : 'none'"
# The same for the acceptance workflow on main: its identity deploys (and destroys) a whole stack in the
# acceptance project, so a branch with edited steps must not get it (a bare environment subject would
# admit one: the subject carries no branch).
ACCEPTANCE_REF="${GITHUB_REPO}/${ACCEPTANCE_WORKFLOW}@refs/heads/main"
ACCEPTANCE_ATTRIBUTE="assertion.ref == 'refs/heads/main' && assertion.job_workflow_ref == '${ACCEPTANCE_REF}' ? assertion.sub : 'none'"
MAPPING="google.subject=assertion.sub,attribute.repository_id=assertion.repository_id,attribute.repository_owner_id=assertion.repository_owner_id,attribute.ref=assertion.ref,attribute.job_workflow_ref=assertion.job_workflow_ref,attribute.deploy=${DEPLOY_ATTRIBUTE},attribute.acceptance=${ACCEPTANCE_ATTRIBUTE}"
# Admission into the pool at all: this repository, by its numeric ids.
ADMISSION="assertion.repository_id == '${GITHUB_REPOSITORY_ID}' && assertion.repository_owner_id == '${GITHUB_OWNER_ID}'"
if exists gcloud iam workload-identity-pools providers describe "$PROVIDER" --workload-identity-pool="$POOL" \
    --location=global --project="$STATE_PROJECT"; then
  # Converge a provider made by an earlier version (name-based condition, no deploy attribute).
  gcloud iam workload-identity-pools providers update-oidc "$PROVIDER" --workload-identity-pool="$POOL" \
    --location=global --project="$STATE_PROJECT" --display-name="GitHub ${GITHUB_REPO}" \
    --issuer-uri="https://token.actions.githubusercontent.com" \
    --attribute-mapping="$MAPPING" --attribute-condition="$ADMISSION" >/dev/null
else
  gcloud iam workload-identity-pools providers create-oidc "$PROVIDER" --workload-identity-pool="$POOL" \
    --location=global --project="$STATE_PROJECT" --display-name="GitHub ${GITHUB_REPO}" \
    --issuer-uri="https://token.actions.githubusercontent.com" \
    --attribute-mapping="$MAPPING" --attribute-condition="$ADMISSION"
fi
PROJECT_NUMBER="$(gcloud projects describe "$STATE_PROJECT" --format='value(projectNumber)')"
POOL_ID="projects/${PROJECT_NUMBER}/locations/global/workloadIdentityPools/${POOL}"
ANY_RUN="principalSet://iam.googleapis.com/${POOL_ID}/attribute.repository_id/${GITHUB_REPOSITORY_ID}"
# main_deploy_job ENVIRONMENT: a job of deploy.yml at main that runs in ENVIRONMENT.
main_deploy_job() { printf 'principalSet://iam.googleapis.com/%s/attribute.deploy/repo:%s:environment:%s' "$POOL_ID" "$GITHUB_REPO" "$1"; }

# impersonation ACCOUNT MEMBER: the only workloadIdentityUser of ACCOUNT is MEMBER.
impersonation() {
  gcloud iam service-accounts add-iam-policy-binding "$1" --project="$STATE_PROJECT" \
    --role=roles/iam.workloadIdentityUser --member="$2" >/dev/null
}
# unbind ACCOUNT MEMBER: drop a binding a previous run (another PR_STACKS) made, when present.
unbind() {
  if exists gcloud iam service-accounts remove-iam-policy-binding "$1" --project="$STATE_PROJECT" \
      --role=roles/iam.workloadIdentityUser --member="$2"; then
    say "Removed ${2##*/} from ${1}"
  fi
}

say "Who may impersonate which account"
for stack in $STACKS; do
  # The deployer of a stack: only a job of deploy.yml on main in the GitHub environment named like the stack.
  impersonation "$(deployer "$stack")" "$(main_deploy_job "$stack")"
  if pr_stack "$stack"; then
    # Any run of the repository (pull requests from any branch): `pulumi preview` runs the PR's own
    # Python, so this previewer holds nothing the PR could not be trusted with (reads, this stack's key).
    impersonation "$(previewer "$stack")" "$ANY_RUN"
    unbind "$(previewer "$stack")" "$(main_deploy_job "${stack}-preview")"
  else
    # Previews of this stack run only in the deploy workflow on main (environment <stack>-preview),
    # i.e. reviewed code, before that stack's `pulumi up`.
    impersonation "$(previewer "$stack")" "$(main_deploy_job "${stack}-preview")"
    unbind "$(previewer "$stack")" "$ANY_RUN"
  fi
done

say "State bucket: each identity reaches its own stack's objects only"
# Pulumi's DIY backend layout for project-scoped stacks (pkg/backend/diy: projectReferenceStore,
# lockPath): .pulumi/stacks/<project>/<stack>.json, .pulumi/history/<project>/<stack>/,
# .pulumi/backups/<project>/<stack>/, .pulumi/locks/organization/<project>/<stack>/.
STATE_WRITER_PERMISSIONS=storage.objects.create,storage.objects.delete,storage.objects.get
custom_role convexStateWriter "$STATE_PROJECT" "convex-gcp: write one stack's Pulumi state" "$STATE_WRITER_PERMISSIONS"
OBJECTS="projects/_/buckets/${BUCKET}/objects"
state_prefixes() {
  printf "resource.name == '%s/.pulumi/meta.yaml' || resource.name.startsWith('%s/.pulumi/stacks/%s/%s.json') || resource.name.startsWith('%s/.pulumi/history/%s/%s/') || resource.name.startsWith('%s/.pulumi/backups/%s/%s/') || resource.name.startsWith('%s/.pulumi/locks/organization/%s/%s/')" \
    "$OBJECTS" "$OBJECTS" "$PULUMI_PROJECT" "$1" "$OBJECTS" "$PULUMI_PROJECT" "$1" "$OBJECTS" "$PULUMI_PROJECT" "$1" "$OBJECTS" "$PULUMI_PROJECT" "$1"
}
lock_prefix() { printf "resource.name.startsWith('%s/.pulumi/locks/organization/%s/%s/')" "$OBJECTS" "$PULUMI_PROJECT" "$1"; }
bucket_grant() {
  gcloud storage buckets add-iam-policy-binding "gs://${BUCKET}" --member="serviceAccount:$1" --role="$2" "$3" >/dev/null
}
for stack in $STACKS; do
  for account in "$(deployer "$stack")" "$(previewer "$stack")"; do
    # Listing is checked on the bucket, not on objects: it shows object names (never contents).
    bucket_grant "$account" roles/storage.legacyBucketReader --condition=None
    bucket_grant "$account" roles/storage.objectViewer \
      --condition-from-file="$(condition "state-read-${stack}" "$(state_prefixes "$stack")")"
  done
  # Not objectAdmin: no storage.objects.restore, setRetention or IAM; deleted generations stay soft-deleted.
  bucket_grant "$(deployer "$stack")" "projects/${STATE_PROJECT}/roles/convexStateWriter" \
    --condition-from-file="$(condition "state-write-${stack}" "$(state_prefixes "$stack")")"
  # A preview takes the stack's lock; it writes nothing else.
  bucket_grant "$(previewer "$stack")" "projects/${STATE_PROJECT}/roles/convexStateWriter" \
    --condition-from-file="$(condition "state-lock-${stack}" "$(lock_prefix "$stack")")"

  # Key-level grants only (never key ring or project). A preview only decrypts.
  gcloud kms keys add-iam-policy-binding "${KEY_PREFIX}-${stack}" --keyring="$KEYRING" --location="$REGION" \
    --project="$STATE_PROJECT" --member="serviceAccount:$(deployer "$stack")" \
    --role=roles/cloudkms.cryptoKeyEncrypterDecrypter >/dev/null
  gcloud kms keys add-iam-policy-binding "${KEY_PREFIX}-${stack}" --keyring="$KEYRING" --location="$REGION" \
    --project="$STATE_PROJECT" --member="serviceAccount:$(previewer "$stack")" \
    --role=roles/cloudkms.cryptoKeyDecrypter >/dev/null
done

# The deployer's predefined roles in its own project (bootstrap/README.md says why each). Not here:
# owner/editor, iam.serviceAccountAdmin (setIamPolicy on every account), a project-wide
# iam.serviceAccountUser, an unconditional compute.instanceAdmin.v1 or secretmanager.admin.
DEPLOYER_ROLES=(
  roles/serviceusage.serviceUsageAdmin
  roles/compute.networkAdmin
  roles/compute.securityAdmin
  roles/compute.loadBalancerAdmin
  roles/cloudsql.admin
  roles/servicenetworking.networksAdmin
  roles/monitoring.editor
  roles/certificatemanager.editor
)
# Narrower than the predefined roles they replace (bootstrap/README.md says why each): no
# logging.configWriter (the program declares no log sink, metric, bucket or exclusion), no project-wide
# dns.admin (no policies, response policies, zone IAM), no iap.admin (no tunnel or OAuth settings).
DNS_PERMISSIONS=dns.managedZones.create,dns.managedZones.delete,dns.managedZones.get,dns.managedZones.list,dns.managedZones.update,dns.resourceRecordSets.create,dns.resourceRecordSets.delete,dns.resourceRecordSets.get,dns.resourceRecordSets.list,dns.resourceRecordSets.update,dns.changes.create,dns.changes.get,dns.changes.list,dns.networks.bindPrivateDNSZone,compute.networks.get
IAP_PERMISSIONS=iap.webServices.getIamPolicy,iap.webServices.setIamPolicy
# The program grants its VM account exactly these project roles; the deployer may grant no others.
GRANTABLE="'roles/cloudsql.client', 'roles/cloudsql.instanceUser', 'roles/cloudsql.viewer', 'roles/logging.logWriter', 'roles/monitoring.metricWriter'"
# Adopting the bootstrap's VM account (create answers 409, then read/update): no delete, enable,
# disable, setIamPolicy, actAs or keys, so no other account in the project can be touched.
SA_PERMISSIONS=iam.serviceAccounts.create,iam.serviceAccounts.get,iam.serviceAccounts.list,iam.serviceAccounts.update
# The exports bucket and the VM's binding on it (no storage.buckets.delete, no storage.objects.*). No iam.roles.*:
# the writer's role is the predefined objectCreator, since conditions cannot narrow custom-role management.
EXPORTS_PERMISSIONS=storage.buckets.create,storage.buckets.get,storage.buckets.list,storage.buckets.update,storage.buckets.getIamPolicy,storage.buckets.setIamPolicy
# What `pulumi preview` (and `--refresh`) reads for the program's resource types: one get per type,
# the IAM policies it manages members of, secret metadata, and the zones and machine types the
# program's placement check lists at every preview (convex_gcp/placement.py). Not: logging.logEntries.* (prod logs carry
# slow statements with their parameters), secretmanager.versions.access (payloads),
# compute.instances.getSerialPortOutput, storage objects (only the exports bucket's metadata and policy), any write.
PREVIEW_PERMISSIONS=$(printf '%s,' \
  serviceusage.services.get serviceusage.services.list \
  resourcemanager.projects.get resourcemanager.projects.getIamPolicy \
  compute.networks.get compute.subnetworks.get compute.routers.get compute.firewalls.get \
  compute.globalAddresses.get compute.addresses.get compute.disks.get compute.instances.get \
  compute.resourcePolicies.get compute.instanceGroups.get compute.healthChecks.get \
  compute.backendServices.get compute.urlMaps.get compute.targetHttpProxies.get \
  compute.targetHttpsProxies.get compute.globalForwardingRules.get compute.sslCertificates.get \
  compute.zones.list compute.machineTypes.list \
  compute.sslPolicies.get compute.securityPolicies.get \
  servicenetworking.services.get \
  cloudsql.instances.get cloudsql.databases.get cloudsql.users.list \
  iam.serviceAccounts.get \
  secretmanager.secrets.get secretmanager.secrets.getIamPolicy secretmanager.versions.get \
  dns.managedZones.get dns.resourceRecordSets.get dns.resourceRecordSets.list \
  certificatemanager.certs.get certificatemanager.certs.list certificatemanager.dnsauthorizations.get \
  certificatemanager.certmaps.get certificatemanager.certmapentries.get \
  logging.logMetrics.get \
  monitoring.alertPolicies.get monitoring.uptimeCheckConfigs.get monitoring.notificationChannels.get \
  storage.buckets.get storage.buckets.getIamPolicy monitoring.metricDescriptors.get)
PREVIEW_PERMISSIONS="${PREVIEW_PERMISSIONS%,}"

# grant MEMBER ROLE CONDITION-FLAG: a role in the current stack's project.
grant() {
  gcloud projects add-iam-policy-binding "$project" --member="$1" --role="$2" "$3" >/dev/null
}
for stack in $STACKS; do
  project="${PROJECT_OF[$stack]}"
  DEPLOYER="serviceAccount:$(deployer "$stack")"
  say "Stack ${stack}: roles in ${project}"
  for role in "${DEPLOYER_ROLES[@]}"; do
    grant "$DEPLOYER" "$role" --condition=None
  done
  grant "$DEPLOYER" roles/resourcemanager.projectIamAdmin \
    --condition-from-file="$(condition "convex-vm-roles-only-${stack}" "api.getAttribute('iam.googleapis.com/modifiedGrantsByRole', []).hasOnly([${GRANTABLE}])")"
  # instanceAdmin includes setMetadata (a startup script runs as the VM's account) on every VM: only on
  # this stack's VM and disks. Other compute types (resource policies, instance groups) are unaffected.
  grant "$DEPLOYER" roles/compute.instanceAdmin.v1 \
    --condition-from-file="$(condition "convex-instances-only-${stack}" "(resource.type != 'compute.googleapis.com/Instance' && resource.type != 'compute.googleapis.com/Disk') || resource.name.startsWith('projects/${project}/zones/${ZONE}/instances/convex-${stack}-') || resource.name.startsWith('projects/${project}/zones/${ZONE}/disks/convex-${stack}-')")"
  # Secret Manager names resources by project NUMBER in conditions; project-level checks (create, list)
  # see the project, every other check the secret, which must be this stack's.
  number="$(gcloud projects describe "$project" --format='value(projectNumber)')"
  grant "$DEPLOYER" roles/secretmanager.admin \
    --condition-from-file="$(condition "convex-secrets-only-${stack}" "resource.type == 'cloudresourcemanager.googleapis.com/Project' || resource.name.startsWith('projects/${number}/secrets/convex-${stack}-')")"
  # Exports (components/exports.py): this stack's exports bucket (created, updated, its retention locked, its
  # IAM policy set; never deleted: the program leaves it on destroy). Project-level checks (create, list) see
  # the project; every other check the bucket, which must be this stack's.
  custom_role convexDeployerExports "$project" "convex-gcp deployer: the exports bucket and its IAM policy" "$EXPORTS_PERMISSIONS"
  grant "$DEPLOYER" "projects/${project}/roles/convexDeployerExports" \
    --condition-from-file="$(condition "convex-exports-only-${stack}" "resource.type == 'cloudresourcemanager.googleapis.com/Project' || resource.name.startsWith('projects/_/buckets/convex-${stack}-exports-')")"
  custom_role convexDeployerDns "$project" "convex-gcp deployer: its DNS zones and records" "$DNS_PERMISSIONS"
  grant "$DEPLOYER" "projects/${project}/roles/convexDeployerDns" --condition=None
  custom_role convexDeployerIap "$project" "convex-gcp deployer: who passes IAP to the dashboard" "$IAP_PERMISSIONS"
  grant "$DEPLOYER" "projects/${project}/roles/convexDeployerIap" --condition=None
  custom_role convexDeployerServiceAccounts "$project" "convex-gcp deployer: adopt the VM account" "$SA_PERMISSIONS"
  grant "$DEPLOYER" "projects/${project}/roles/convexDeployerServiceAccounts" --condition=None
  custom_role convexPreviewer "$project" "convex-gcp previewer: what pulumi preview reads" "$PREVIEW_PERMISSIONS"
  grant "serviceAccount:$(previewer "$stack")" "projects/${project}/roles/convexPreviewer" --condition=None

  # actAs on exactly one account: the VM's, created here so the grant never has to be project-wide
  # (IAM conditions cannot narrow iam.serviceAccounts.actAs by account). The program adopts it
  # (components/identity.py: create_ignore_already_exists, and leaves it on destroy).
  gcloud services enable iam.googleapis.com --project="$project"
  vm_id="$(vm_account_id "$stack")"
  vm_email="${vm_id}@${project}.iam.gserviceaccount.com"
  ensure_account "$vm_id" "$project" "Convex backend VM (convex-${stack})" \
    "Runs the Cloud SQL Auth Proxy and Convex on the Convex VM"
  gcloud iam service-accounts add-iam-policy-binding "$vm_email" --project="$project" \
    --member="$DEPLOYER" --role=roles/iam.serviceAccountUser >/dev/null

  # The grant account: a database user in cloudsqlsuperuser (the program declares it), whose tokens only
  # the VM account may mint, to run the Convex role's grants through the Cloud SQL Data API at every boot
  # (vm/startup.sh ensure_db_grants; docs/security.md, "Database"). The deployer gets no actAs on it.
  grant_id="$(grant_account_id "$stack")"
  grant_email="${grant_id}@${project}.iam.gserviceaccount.com"
  ensure_account "$grant_id" "$project" "Convex database grants (convex-${stack})" \
    "Grants the Convex database role its privileges through the Cloud SQL Data API"
  gcloud iam service-accounts add-iam-policy-binding "$grant_email" --project="$project" \
    --member="serviceAccount:${vm_email}" --role=roles/iam.serviceAccountTokenCreator >/dev/null
done

if [[ -n "$ACCEPTANCE_PROJECT" ]]; then
  [[ "$ACCEPTANCE_PROJECT" =~ ^[a-z][-a-z0-9]{4,28}[a-z0-9]$ ]] || die "ACCEPTANCE_PROJECT '$ACCEPTANCE_PROJECT' is not a project id"
  for stack in $STACKS; do
    [[ "${PROJECT_OF[$stack]}" != "$ACCEPTANCE_PROJECT" ]] || die "ACCEPTANCE_PROJECT must not be a stack's project (it deploys and destroys whole stacks)"
  done
  say "Acceptance identity: acceptance.yml on main only, its own state bucket and key, roles in ${ACCEPTANCE_PROJECT}"
  ACCEPTANCE_SA="convex-gcp-acceptance@${STATE_PROJECT}.iam.gserviceaccount.com"
  ensure_account convex-gcp-acceptance "$STATE_PROJECT" "convex-gcp acceptance runs (GitHub Actions)"
  impersonation "$ACCEPTANCE_SA" "principalSet://iam.googleapis.com/${POOL_ID}/attribute.acceptance/repo:${GITHUB_REPO}:environment:acceptance"
  ACCEPTANCE_BUCKET="${STATE_PROJECT}-acceptance-state"
  if ! exists gcloud storage buckets describe "gs://${ACCEPTANCE_BUCKET}" --project="$STATE_PROJECT"; then
    gcloud storage buckets create "gs://${ACCEPTANCE_BUCKET}" --project="$STATE_PROJECT" --location="$REGION" \
      --uniform-bucket-level-access --public-access-prevention
  fi
  gcloud storage buckets update "gs://${ACCEPTANCE_BUCKET}" --versioning --uniform-bucket-level-access \
    --public-access-prevention --soft-delete-duration="$SOFT_DELETE"
  for role in roles/storage.legacyBucketReader roles/storage.objectViewer "projects/${STATE_PROJECT}/roles/convexStateWriter"; do
    gcloud storage buckets add-iam-policy-binding "gs://${ACCEPTANCE_BUCKET}" --member="serviceAccount:${ACCEPTANCE_SA}" \
      --role="$role" --condition=None >/dev/null
  done
  if ! exists gcloud kms keys describe "${KEY_PREFIX}-acceptance" --keyring="$KEYRING" --location="$REGION" --project="$STATE_PROJECT"; then
    gcloud kms keys create "${KEY_PREFIX}-acceptance" --keyring="$KEYRING" --location="$REGION" --project="$STATE_PROJECT" \
      --purpose=encryption --rotation-period=90d \
      --next-rotation-time="$(date -u -d '+90 days' +%Y-%m-%dT%H:%M:%SZ)"
  fi
  gcloud kms keys add-iam-policy-binding "${KEY_PREFIX}-acceptance" --keyring="$KEYRING" --location="$REGION" \
    --project="$STATE_PROJECT" --member="serviceAccount:${ACCEPTANCE_SA}" \
    --role=roles/cloudkms.cryptoKeyEncrypterDecrypter >/dev/null
  # Ephemeral stacks (acc-<target>-<id>) make their own accounts, buckets and roles: in the sandbox project
  # only, which holds nothing else, the identity may administer them and act as the accounts.
  project="$ACCEPTANCE_PROJECT"
  for role in "${DEPLOYER_ROLES[@]}" roles/compute.instanceAdmin.v1 roles/secretmanager.admin roles/iam.serviceAccountAdmin \
    roles/iam.serviceAccountUser roles/resourcemanager.projectIamAdmin roles/iam.roleAdmin roles/storage.admin roles/dns.admin roles/iap.admin; do
    grant "serviceAccount:${ACCEPTANCE_SA}" "$role" --condition=None
  done
fi

BACKEND_URL="gs://${BUCKET}"
if [[ "${INIT_STACKS:-0}" == "1" ]]; then
  say "Recording each stack's secrets provider in its stack file"
  pulumi login "$BACKEND_URL"
  for stack in $STACKS; do
    provider="gcpkms://${KEY_BASE}-${stack}"
    if pulumi stack select "organization/${PULUMI_PROJECT}/${stack}" >/dev/null 2>&1; then
      pulumi stack change-secrets-provider --stack "organization/${PULUMI_PROJECT}/${stack}" "$provider"
    else
      pulumi stack init "organization/${PULUMI_PROJECT}/${stack}" --secrets-provider="$provider"
    fi
  done
fi

echo
echo "Done. Set these GitHub repository variables (Settings > Secrets and variables > Actions > Variables):"
echo "  gh variable set PULUMI_BACKEND_URL --body '${BACKEND_URL}'"
echo "  gh variable set GCP_WORKLOAD_IDENTITY_PROVIDER --body '${POOL_ID}/providers/${PROVIDER}'"
for stack in $STACKS; do
  upper="$(printf '%s' "$stack" | tr '[:lower:]' '[:upper:]')"
  echo "  gh variable set GCP_DEPLOYER_${upper} --body '$(deployer "$stack")'"
  echo "  gh variable set GCP_PREVIEWER_${upper} --body '$(previewer "$stack")'"
done
echo "Create the GitHub environments (deployment branches: main only):"
for stack in $STACKS; do
  if pr_stack "$stack"; then
    echo "  ${stack}"
  else
    echo "  ${stack} (required reviewers, prevent self-review), ${stack}-preview"
  fi
done
echo "  release (required reviewers, prevent self-review): tags and draft releases of the component package"
echo "Protect main: require pull requests with review from code owners (.github/CODEOWNERS)."
echo "Secrets provider of each stack: gcpkms://${KEY_BASE}-<stack>"
echo "  (INIT_STACKS=1 records it; then commit Pulumi.<stack>.yaml: secretsprovider + encryptedkey)"
