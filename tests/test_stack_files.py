"""Stack files name the Cloud KMS secrets provider bootstrap/bootstrap.sh makes for their stack, so CI
decrypts with its identity instead of falling back to a passphrase it does not have."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.conftest import ROOT
from tools.plan import stacks

BOOTSTRAP = (ROOT / "bootstrap" / "bootstrap.sh").read_text()


def bootstrap_default(name: str) -> str:
    match = re.search(rf'^{name}="\$\{{{name}:-([^}}]+)\}}"$', BOOTSTRAP, re.M)
    assert match, f"bootstrap.sh no longer sets {name} with a default"
    return match.group(1)


def provider_problems(document: dict, stack: str) -> list[str]:
    """What is wrong with a GCP stack file's secrets provider, against bootstrap.sh's key naming
    (KEY_BASE=projects/<STATE_PROJECT>/locations/<REGION>/keyRings/<KEYRING>/cryptoKeys/<KEY_PREFIX>, then -<stack>)."""
    assert 'KEY_BASE="projects/${STATE_PROJECT}/locations/${REGION}/keyRings/${KEYRING}/cryptoKeys/${KEY_PREFIX}"' in BOOTSTRAP
    assert 'provider="gcpkms://${KEY_BASE}-${stack}"' in BOOTSTRAP
    provider = document.get("secretsprovider")
    if not provider:
        return ["no secretsprovider: the CLI would fall back to a passphrase provider"]
    keyring, prefix = bootstrap_default("KEYRING"), bootstrap_default("KEY_PREFIX")
    pattern = (rf"gcpkms://projects/[a-z][-a-z0-9]{{4,28}}[a-z0-9]/locations/[a-z0-9-]+/keyRings/{re.escape(keyring)}"
               rf"/cryptoKeys/{re.escape(prefix)}-{re.escape(stack)}")
    if not re.fullmatch(pattern, provider):
        return [f"secretsprovider {provider!r} is not this stack's bootstrap key ({pattern})"]
    if "encryptionsalt" in document:
        return ["encryptionsalt is a passphrase provider's; a KMS stack has none"]
    return []


def gcp_stacks() -> list[str]:
    # The local stack runs on this machine with a throwaway passphrase (docs/local.md); every other is a GCP stack.
    found = [s for s in stacks() if (yaml.safe_load((ROOT / f"Pulumi.{s}.yaml").read_text())["config"] or {}).get("convex-gcp:target") != "local"]
    assert {"dev", "prod"} <= set(found)
    return found


@pytest.mark.parametrize("stack", gcp_stacks())
def test_every_gcp_stack_file_names_its_kms_key(stack):
    document = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())
    assert provider_problems(document, stack) == []


def test_a_stack_file_without_its_key_fails():
    good = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())
    missing = {k: v for k, v in good.items() if k != "secretsprovider"}
    assert provider_problems(missing, "dev")
    assert provider_problems({**good, "secretsprovider": "passphrase"}, "dev")
    # prod's key in dev's file: dev's deployer could not decrypt it, and it would be the wrong key.
    assert provider_problems({**good, "secretsprovider": good["secretsprovider"].replace("-dev", "-prod")}, "dev")
    assert provider_problems({**good, "encryptionsalt": "v1:abc"}, "dev")
    assert provider_problems(good, "dev") == []
