"""Identity: the VM's dedicated service account, its project roles, and the Secret Manager
secrets (Convex INSTANCE_SECRET, admin key, database password) with per-secret access."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_gcp as gcp
import pulumi_random as random


def vm_project_roles(iam_auth: bool, sql_admin: bool = True, list_server_cas: bool = False) -> list[str]:
    """Least privilege for the VM: connect through the proxy (or read the server CAs in ssl mode), log in
    as itself, ship logs and metrics. Plaintext mode never calls the SQL Admin API."""
    roles = (["roles/cloudsql.client"] if sql_admin else []) + ["roles/logging.logWriter", "roles/monitoring.metricWriter"]
    if iam_auth:
        roles.insert(1, "roles/cloudsql.instanceUser")
    if list_server_cas:
        # cloudsql.client lacks cloudsql.instances.listServerCas, which returns the upcoming CA
        # during a rotation; cloudsql.viewer is the narrowest predefined role that has it.
        roles.insert(1, "roles/cloudsql.viewer")
    return roles


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

        # What must exist before the VM boots, so its first boot can read and write its secrets.
        self.vm_prerequisites: list[pulumi.Resource] = [
            *self.project_roles,
            *self.secret_grants,
            *([self.db_password_version] if self.db_password_version else []),
        ]

        self.register_outputs(
            {
                "service_account": self.service_account.email,
                "instance_secret": self.instance_secret.id,
                "admin_key_secret": self.admin_key.id,
                "db_password_secret": self.db_password_secret.id if self.db_password_secret else None,
            }
        )
