"""Where the shared test data lives: flagd's JSON schemas and the flagd testbed, kept outside the repo.

They are other projects' files, so the repository does not copy them; set RINGMASTER_SHARED_DIR when
they are somewhere other than ../shared beside the checkout or /work/shared.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from jsonschema import Draft7Validator
from referencing import Registry, Resource

REPOSITORY = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    candidates = [Path(os.environ["RINGMASTER_SHARED_DIR"])] if "RINGMASTER_SHARED_DIR" in os.environ else []
    candidates += [REPOSITORY.parent / "shared", Path("/work/shared")]
    for candidate in candidates:
        if (candidate / "flagd-schema" / "flags.json").is_file():
            return candidate
    raise FileNotFoundError(
        f"flagd's schemas were not found in any of {[str(path) for path in candidates]}; "
        "set RINGMASTER_SHARED_DIR to the folder holding flagd-schema/ and flagd-testbed/"
    )


def flagd_validator() -> Draft7Validator:
    """A validator for flagd's flags.json, resolving its reference to targeting.json locally."""
    schema_dir = shared_dir() / "flagd-schema"
    resources = []
    for name in ("flags.json", "targeting.json"):
        document: dict[str, Any] = json.loads((schema_dir / name).read_text())
        resources.append((document["$id"], Resource.from_contents(document)))
    registry: Registry[Any] = Registry().with_resources(resources)
    # Enter through a reference so relative references resolve against flags.json's own $id.
    return Draft7Validator({"$ref": resources[0][0]}, registry=registry)
