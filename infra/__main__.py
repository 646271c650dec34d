"""Pulumi program entry: validate the stack's config, then build the platform.

`pulumi preview` / `pulumi up` run this file; the offline render (`python -m infra.render`)
runs the very same `main()` under Pulumi's mock runtime.
"""

import sys
from pathlib import Path

# Pulumi runs this file by path; make the repository's packages importable however it is run.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.program import main

main()
