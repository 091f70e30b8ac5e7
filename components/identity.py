"""Identity: the VM's dedicated service account, its project roles, and the Secret Manager
secrets (Convex INSTANCE_SECRET, admin key, database password) with per-secret access."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_gcp as gcp
import pulumi_random as random

from convex_gcp import db_grants


def vm_project_roles(iam_auth: bool, sql_admin: bool = True, list_server_cas: bool = False) -> list[str]:
    """Least privilege for the VM: ship logs and metrics, project-wide (what they write to is the project's);
    the Cloud SQL roles are bound on the instance alone (vm_sql_roles, sql_instance_condition)."""
    return ["roles/logging.logWriter", "roles/monitoring.metricWriter"]


def vm_sql_roles(iam_auth: bool, sql_admin: bool = True, list_server_cas: bool = False) -> list[str]:
    """Connect through the proxy (or read the server CAs in ssl mode) and log in as itself, on the
    instance only. Plaintext mode never calls the SQL Admin API."""
    roles = ["roles/cloudsql.client"] if sql_admin else []
    if iam_auth:
        roles.append("roles/cloudsql.instanceUser")
    if list_server_cas:
        # cloudsql.client lacks cloudsql.instances.listServerCas, which returns the upcoming CA
        # during a rotation; cloudsql.viewer is the narrowest predefined role that has it.
        roles.append("roles/cloudsql.viewer")
    return roles


# The grant account logs in through the Data API only (instances.executeSql needs
# cloudsql.instances.executesql and the IAM login, both in cloudsql.instanceUser: Cloud SQL docs,
# "Execute SQL statements using the Cloud SQL Data API", required roles).
GRANT_ACCOUNT_ROLES = ["roles/cloudsql.instanceUser"]


def sql_instance_condition(project: str, instance: str) -> dict[str, str]:
    """An IAM condition matching one Cloud SQL instance and nothing else: the resource name and type as
    Google's sample binds cloudsql.client to one instance (terraform-google-modules/terraform-docs-samples
    cloud_sql/instance_iam_condition/main.tf). Equality, never startsWith: a prefix would match
    `<instance>-clone` too."""
    return {
        "title": "convex-sql-instance",
        "description": "This Cloud SQL instance only",
        "expression": f"resource.name == 'projects/{project}/instances/{instance}' && resource.type == 'sqladmin.googleapis.com/Instance'",
    }


@dataclass
class IdentityArgs:
    prefix: str
    project: str
    region: str
    iam_auth: bool
    labels: dict[str, str] = field(default_factory=dict)
    # The VM calls the SQL Admin API (proxy and ssl modes).
    sql_admin: bool = True
    # ssl mode: the VM keeps the server CA bundle (current and upcoming CAs) current.
    list_server_cas: bool = False
    # Every stack: the instance secret's loss orphans the Convex data tied to it (admin keys, encrypted
    # values); only a deliberate `convex-gcp:unprotect: [instanceSecret]` lifts it.
    protect_instance_secret: bool = True
    depends_on: list[pulumi.Resource] = field(default_factory=list)


class Identity(pulumi.ComponentResource):
    """Owns the VM service account, its IAM bindings, and the secrets the VM reads or writes."""

    def __init__(self, name: str, args: IdentityArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("convex-gcp:index:Identity", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, depends_on=args.depends_on)

        self.service_account = gcp.serviceaccount.Account(
            f"{name}-vm-sa",
            account_id=f"{args.prefix}-vm"[:30],
            display_name=f"Convex backend VM ({args.prefix})",
            description="Runs the Cloud SQL Auth Proxy and Convex on the Convex VM",
            # bootstrap/bootstrap.sh creates this account so the deployer can act as it alone (never
            # project-wide); the program adopts it and leaves it on destroy (the deployer cannot delete accounts).
            create_ignore_already_exists=True,
            deletion_policy="ABANDON",
            opts=child,
        )
        member = self.service_account.email.apply(lambda email: f"serviceAccount:{email}")
        self.project_roles = [
            gcp.projects.IAMMember(
                f"{name}-{role.split('/')[1].replace('.', '-')}",
                project=args.project,
                role=role,
                member=member,
                opts=pulumi.ResourceOptions(parent=self),
            )
            for role in vm_project_roles(args.iam_auth, args.sql_admin, args.list_server_cas)
        ]

        def secret(key: str, description: str, protect: bool = False) -> gcp.secretmanager.Secret:
            return gcp.secretmanager.Secret(
                f"{name}-{key}",
                secret_id=f"{args.prefix}-{key}",
                deletion_protection=protect,
                replication=gcp.secretmanager.SecretReplicationArgs(
                    user_managed=gcp.secretmanager.SecretReplicationUserManagedArgs(
                        replicas=[gcp.secretmanager.SecretReplicationUserManagedReplicaArgs(location=args.region)]
                    )
                ),
                labels=args.labels,
                annotations={"description": description},
                opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(protect=protect)),
            )

        self.secret_grants: list[gcp.secretmanager.SecretIamMember] = []

        def grant(key: str, target: gcp.secretmanager.Secret, role: str) -> None:
            self.secret_grants.append(gcp.secretmanager.SecretIamMember(
                f"{name}-{key}-{role.split('.')[-1]}",
                secret_id=target.id,
                role=role,
                member=member,
                opts=pulumi.ResourceOptions(parent=self),
            ))

        # The VM generates INSTANCE_SECRET on its first boot and stores it here, so the value
        # never enters Pulumi state (which every preview can decrypt).
        self.instance_secret = secret("instance-secret", "Convex INSTANCE_SECRET", protect=args.protect_instance_secret)
        grant("instance-secret", self.instance_secret, "roles/secretmanager.secretVersionAdder")
        grant("instance-secret", self.instance_secret, "roles/secretmanager.secretAccessor")

        # The VM generates the admin key once Convex is up and stores it here; deployers read it.
        self.admin_key = secret("admin-key", "Convex admin key for npx convex deploy")
        grant("admin-key", self.admin_key, "roles/secretmanager.secretVersionAdder")
        # Read access lets the VM see that a key exists already instead of minting another.
        grant("admin-key", self.admin_key, "roles/secretmanager.secretAccessor")

        self.db_password_version: gcp.secretmanager.SecretVersion | None = None
        self.db_password: pulumi.Output[str] | None = None
        self.db_password_secret: gcp.secretmanager.Secret | None = None
        if not args.iam_auth:
            password = random.RandomPassword(
                f"{name}-db-password-value",
                length=32,
                special=False,  # goes into a URL unescaped
                opts=pulumi.ResourceOptions(parent=self),
            )
            self.db_password = password.result
            self.db_password_secret = secret("db-password", "Password of the Convex database user")
            self.db_password_version = gcp.secretmanager.SecretVersion(
                f"{name}-db-password-v1",
                secret=self.db_password_secret.id,
                secret_data=password.result,
                opts=pulumi.ResourceOptions(parent=self),
            )
            grant("db-password", self.db_password_secret, "roles/secretmanager.secretAccessor")

        # The account the VM acts as, at every boot, to grant the Convex role its privileges through the
        # Cloud SQL Data API (vm/startup.sh ensure_db_grants). Made by bootstrap/bootstrap.sh, which lets the
        # VM account and nothing else mint its tokens; adopted here and left on destroy, like the VM's.
        self.grant_account: gcp.serviceaccount.Account | None = None
        if args.iam_auth:
            self.grant_account = gcp.serviceaccount.Account(
                f"{name}-sqlgrant-sa",
                account_id=db_grants.grant_account_id(args.prefix),
                display_name=f"Convex database grants ({args.prefix})",
                description="Grants the Convex database role its privileges through the Cloud SQL Data API",
                create_ignore_already_exists=True,
                deletion_policy="ABANDON",
                opts=child,
            )

        # What must exist before the VM boots, so its first boot can read and write its secrets.
        self.vm_prerequisites: list[pulumi.Resource] = [
            *self.project_roles,
            *self.secret_grants,
            *([self.db_password_version] if self.db_password_version else []),
        ]

        self._args, self._name, self._member = args, name, member
        self.register_outputs(
            {
                "service_account": self.service_account.email,
                "instance_secret": self.instance_secret.id,
                "admin_key_secret": self.admin_key.id,
                "db_password_secret": self.db_password_secret.id if self.db_password_secret else None,
            }
        )

    def bind_sql_instance(self, instance_name: pulumi.Input[str]) -> None:
        """The Cloud SQL roles of the VM account (and the grant account), on this instance alone; the VM
        boots after them. Called once the instance's name is known (components/convex_on_gcp.py), so these
        children come after register_outputs, which names none of them."""
        args, name = self._args, self._name

        def bind(key: str, member: pulumi.Input[str], role: str) -> gcp.projects.IAMMember:
            condition = pulumi.Output.from_input(instance_name).apply(lambda i: sql_instance_condition(args.project, i))
            return gcp.projects.IAMMember(
                f"{name}-{key}{role.split('/')[1].replace('.', '-')}",
                project=args.project,
                role=role,
                member=member,
                condition=condition.apply(lambda c: gcp.projects.IAMMemberConditionArgs(**c)),
                opts=pulumi.ResourceOptions(parent=self),
            )

        bound = [bind("", self._member, role) for role in vm_sql_roles(args.iam_auth, args.sql_admin, args.list_server_cas)]
        if self.grant_account is not None:
            grant_member = self.grant_account.email.apply(lambda email: f"serviceAccount:{email}")
            bound += [bind("sqlgrant-", grant_member, role) for role in GRANT_ACCOUNT_ROLES]
        self.project_roles += bound
        self.vm_prerequisites += bound
