"""Entry point `pulumi preview --policy-pack policies` runs: it only builds the pack.

The rules live in importable modules (`policies.rules`), so the offline verdict and the tests
use the very same objects; `PolicyPack(...)` starts a gRPC server and blocks, so nothing else
may happen here.
"""

import sys
from pathlib import Path

# The CLI runs this file by path; make the repository's packages importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pulumi_policy import EnforcementLevel, PolicyPack

from policies.rules import PACK_NAME, POLICIES

PolicyPack(name=PACK_NAME, enforcement_level=EnforcementLevel.MANDATORY, policies=POLICIES)
