"""Exit 0 when this Python is the cluster's (3.11.7, or $QFLEET_PYTHON) and every pin of
deploy/constraints.txt is installed, else 1 with what differs. Standard library only: the cluster YAMLs run it
before qfleet is installed, to skip reinstalling a node that is already right.

    python deploy/cluster/check_node.py [path/to/constraints.txt]
"""
import importlib.metadata
import os
import sys
from pathlib import Path

PYTHON = os.environ.get("QFLEET_PYTHON", "3.11.7")


def main() -> int:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "constraints.txt"
    wrong = [] if sys.version.split()[0] == PYTHON else [f"python {sys.version.split()[0]} (want {PYTHON})"]
    for line in path.read_text().splitlines():
        name, _, version = line.split("#")[0].strip().partition("==")
        if not name:
            continue
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            have = "missing"
        if have.split("+")[0] != version:
            wrong.append(f"{name} {have} (want {version})")
    if wrong:
        print("node differs from deploy/constraints.txt: " + ", ".join(wrong), file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
