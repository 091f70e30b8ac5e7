"""convex-gcp policy pack: every rule is mandatory (a violation fails the preview or update).
The rules live in policy/rules.py; this file only starts the analyzer."""

import sys
from pathlib import Path

# The analyzer runs this directory as a script: make `policy` importable as a package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulumi_policy import EnforcementLevel, PolicyPack  # noqa: E402

from policy.pack import PACK_NAME, build_policies, keep_secret_paths  # noqa: E402

keep_secret_paths()
PolicyPack(name=PACK_NAME, policies=build_policies(), enforcement_level=EnforcementLevel.MANDATORY)
