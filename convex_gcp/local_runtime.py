"""What the local (Docker) stack's containers run: the VM's rendering (runtime.backend_env in
plaintext mode) with local hosts and ports. Pure functions, tested directly."""

from __future__ import annotations

from .runtime import BACKEND_IMAGE, DASHBOARD_IMAGE, RuntimeInputs, backend_env, dashboard_env, render_env
from .settings import LocalStackSettings

POSTGRES_HOST, POSTGRES_PORT, DATABASE_USER = "postgres", 5432, "convex"


def local_urls(settings: LocalStackSettings) -> dict[str, str]:
    """Origins on the host's loopback: the ports are configurable, unlike the VM's."""
    local = settings.local
    return {
        "convex_url": f"http://127.0.0.1:{local.api_port}",
        "convex_site_url": f"http://127.0.0.1:{local.site_port}",
        "dashboard_url": f"http://127.0.0.1:{local.dashboard_port}",
    }


def _inputs() -> RuntimeInputs:
    # Only the plaintext-mode fields matter: the Postgres container's network alias and user.
    return RuntimeInputs(project="", connection_name="", public_host="127.0.0.1", database_user=DATABASE_USER,
                         instance_secret_id="", admin_key_secret_id="", sql_private_ip=POSTGRES_HOST)


def local_backend_env(settings: LocalStackSettings) -> dict[str, str]:
    """runtime.backend_env (INSTANCE_NAME, pool, log settings, POSTGRES_URL without a database,
    DO_NOT_REQUIRE_SSL) with the origins the host's clients use. No INSTANCE_SECRET: see LocalBackend."""
    env = backend_env(settings, _inputs())  # type: ignore[arg-type]  (duck-typed: the fields backend_env reads)
    urls = local_urls(settings)
    env["CONVEX_CLOUD_ORIGIN"] = urls["convex_url"]
    env["CONVEX_SITE_ORIGIN"] = urls["convex_site_url"]
    return env


def with_password(url: str, password: str) -> str:
    """user@host → user:password@host, as vm/startup.sh does at boot (URL-safe alphanumerics only)."""
    if not password.isalnum():
        raise ValueError("the database password must be URL-safe alphanumerics")
    user, sep, rest = url.partition("@")
    if not sep:
        raise ValueError("POSTGRES_URL has no user@ part to add the password to")
    return f"{user}:{password}@{rest}"


def backend_env_lines(settings: LocalStackSettings, password: str) -> list[str]:
    env = local_backend_env(settings)
    env["POSTGRES_URL"] = with_password(env["POSTGRES_URL"], password)
    return render_env(env).splitlines()


def local_dashboard_env(settings: LocalStackSettings) -> dict[str, str]:
    env = dashboard_env(settings, _inputs())  # type: ignore[arg-type]
    if env:
        env["NEXT_PUBLIC_DEPLOYMENT_URL"] = local_urls(settings)["convex_url"]
    return env


def images(settings: LocalStackSettings) -> dict[str, str]:
    """The same pinned references the VM pulls."""
    tag = settings.convex.version
    return {"backend": BACKEND_IMAGE.format(tag=tag), "dashboard": DASHBOARD_IMAGE.format(tag=tag)}


def admin_key_command(container: str) -> str:
    """Prints the admin key: the image's own script (WORKDIR /convex) reads the secret from the volume."""
    return f"docker exec {container} ./generate_admin_key.sh"


def local_postgres_url(settings: LocalStackSettings, password: str) -> str:
    """The Convex database as the host reaches it (127.0.0.1): for tools/e2e.py and psql. A secret output."""
    return f"postgresql://{DATABASE_USER}:{password}@127.0.0.1:{settings.local.postgres_port}/{settings.database_name}"
