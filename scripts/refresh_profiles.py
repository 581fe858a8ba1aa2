"""Maintainers' tool: rebuild every shipped base profile under the installed transformers and record the result.

    python scripts/refresh_profiles.py

For each base in manifests/bases/ with a config.json, the profile is built on the meta device. Same content as the
shipped profile.json: the installed transformers version is added to its ``verified_transformers``. Different
content (a drift in the modeling code): the old profile is kept as ``profile-transformers-<version>.json``, the new
build becomes ``profile.json``, and the first difference is printed. Exit 1 when any base drifted.
"""

from __future__ import annotations

import sys

from loradoc.model.profiles import installed_version, refresh_shipped_profile, shipped_bases


def main() -> int:
    tf = installed_version("transformers")
    drifted = 0
    print(f"{'base':<32} {'transformers':<13} result")
    for repo_id in shipped_bases():
        path, drift = refresh_shipped_profile(repo_id)
        drifted += drift is not None
        print(f"{repo_id:<32} {tf:<13} {'DRIFT: ' + drift if drift else 'same content, verified'} ({path.name})")
    return 1 if drifted else 0


if __name__ == "__main__":
    sys.exit(main())
